//! PLACEHOLDER: being implemented.
#![allow(unused_variables, missing_docs, clippy::missing_safety_doc)]
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::{BackendInfo, Completion, Config, Op, OpId, Waker};

pub struct Uring {
    info: BackendInfo,
    _not_send: std::marker::PhantomData<*mut ()>,
}

impl Uring {
    pub fn new(config: &Config) -> io::Result<Uring> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }
    pub unsafe fn push(&mut self, op: Op, user_data: u64) -> OpId {
        unimplemented!()
    }
    pub fn cancel(&mut self, id: OpId) -> bool {
        unimplemented!()
    }
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        unimplemented!()
    }
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        unimplemented!()
    }
    pub fn waker(&self) -> Waker {
        unimplemented!()
    }
    pub fn in_flight(&self) -> usize {
        unimplemented!()
    }
    pub fn shutdown(&mut self, out: &mut Vec<Completion>) {
        unimplemented!()
    }
}
pub fn is_unavailable(e: &io::Error) -> bool { matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP | libc::EACCES | libc::EINVAL)) }
