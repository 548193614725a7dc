use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use fdloop::{BackendChoice, Interest, Loop};

#[test]
fn probe() {
    for choice in [BackendChoice::Epoll, BackendChoice::Uring] {
        let lp = Loop::builder().backend(choice).build().unwrap();
        let (a, mut peer) = UnixStream::pair().unwrap();
        let dup = a.try_clone().unwrap();
        let fd = a.as_raw_fd();
        lp.start_poll(fd, Interest::READABLE, move |_lp, r| { eprintln!("{choice:?} event {r:?}"); }).unwrap();
        lp.run_for(Duration::from_millis(5)).unwrap();
        drop(a); // closed behind the loop, the file lives on in `dup`
        peer.write_all(b"x").unwrap();
        lp.run_for(Duration::from_millis(5)).unwrap();
        lp.detach(fd).unwrap();
        let cpu0 = cpu();
        let start = Instant::now();
        let mut n = 0;
        let t = lp.start_timer(fdloop::Timer::every(Duration::from_millis(5)), |_, _| {});
        while start.elapsed() < Duration::from_millis(50) { lp.run_once().unwrap(); n += 1; }
        lp.stop_timer(t).unwrap();
        eprintln!("{choice:?}: {n} iterations in 50 ms after detach, cpu {:?}", cpu() - cpu0);
        drop(dup);
    }
}

fn cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    Duration::from_micros((ru.ru_utime.tv_sec * 1_000_000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1_000_000 + ru.ru_stime.tv_usec) as u64)
}
