mod common;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use fdloop::{BackendChoice, Loop};

#[test]
fn probe_hol() {
    for cq in [8u32, 1024] {
        let lp = Loop::builder().backend(BackendChoice::Uring).cq_entries(cq).ring_entries(4).build().unwrap();
        println!("{}", lp.backend());
        let n = cq as usize + 10;
        let pipes: Vec<_> = (0..n).map(|_| common::pipe()).collect();
        let done = Rc::new(Cell::new(0));
        for (r, _) in &pipes {
            let d = done.clone();
            lp.read(r, vec![0; 8], move |_, res, _| { res.unwrap(); d.set(d.get() + 1); });
        }
        lp.run_for(Duration::from_millis(20)).unwrap();
        common::write_fd(&pipes[n - 1].1, b"x");
        lp.run_for(Duration::from_millis(500)).unwrap();
        println!("cq {cq}: completed {} (expected 1)", done.get());
    }
}
