//! The checks behind fdloop's fuzz targets, one per decoder of kernel bytes, and seed inputs.
//!
//! Each check decodes an arbitrary buffer, consumes every item, and asserts what the decoder
//! promises: it never panics, never reads outside the buffer, accounts for every byte (records
//! yielded plus the undecoded rest), and reports exactly the fields stored at the documented
//! offsets. The same checks run under libFuzzer (`fuzz_targets/`, `cargo fuzz run <target>`)
//! and under the bounded smoke runner (`src/bin/smoke.rs`), which needs no instrumentation.

use fdloop::dev::fanotify::{self, METADATA_LEN};
use fdloop::dev::gpio::cdev::{self, EdgeKind, EDGE_EVENT_SIZE};
use fdloop::dev::inotify;

/// Size of `struct inotify_event` without its name.
const INOTIFY_HEADER: usize = 16;

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap())
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap())
}

/// `fdloop::dev::inotify::decode`: records of `struct inotify_event` + name.
pub fn inotify(data: &[u8]) {
    let mut decoder = inotify::decode(data);
    let mut at = 0usize;
    let mut count = 0usize;
    while let Some(ev) = decoder.next() {
        count += 1;
        assert!(
            count <= data.len() / INOTIFY_HEADER,
            "more records than headers fit"
        );
        let len = u32_at(data, at + 12) as usize;
        assert_eq!(ev.wd, u32_at(data, at) as i32);
        assert_eq!(ev.mask, u32_at(data, at + 4));
        assert_eq!(ev.cookie, u32_at(data, at + 8));
        let raw_name = &data[at + INOTIFY_HEADER..at + INOTIFY_HEADER + len];
        match ev.name {
            Some(name) => {
                assert!(!name.is_empty() && !name.contains(&0));
                assert!(raw_name.starts_with(name));
                assert!(raw_name.get(name.len()).is_none_or(|&b| b == 0));
            }
            None => assert!(raw_name.first().is_none_or(|&b| b == 0)),
        }
        let _ = ev.kind();
        at += INOTIFY_HEADER + len;
        assert_eq!(decoder.rest(), &data[at..], "rest after a record");
    }
    // What is left is an incomplete record: a short header, or a name running past the end.
    let rest = decoder.rest();
    assert_eq!(rest, &data[at..]);
    if rest.len() >= INOTIFY_HEADER {
        let len = u32_at(rest, 12) as usize;
        assert!(
            INOTIFY_HEADER + len > rest.len(),
            "a complete record was left undecoded"
        );
    }
    assert!(
        decoder.next().is_none(),
        "the decoder resumed after stopping"
    );
}

/// `fdloop::dev::fanotify::decode`: `struct fanotify_event_metadata` records and their info.
pub fn fanotify(data: &[u8]) {
    let mut records = fanotify::decode(data);
    let mut at = 0usize;
    let mut failed = false;
    while let Some(r) = records.next() {
        assert!(!failed, "a record after an error");
        let rec = &data[at..];
        match r {
            Ok(ev) => {
                let event_len = u32_at(rec, 0) as usize;
                let metadata_len = u16_at(rec, 6) as usize;
                assert_eq!(rec[4], 3, "version");
                assert!(event_len >= METADATA_LEN && event_len <= rec.len());
                assert!(metadata_len >= METADATA_LEN && metadata_len <= event_len);
                assert_eq!(ev.mask, u64_at(rec, 8));
                assert_eq!(ev.fd, u32_at(rec, 16) as i32);
                assert_eq!(ev.pid, u32_at(rec, 20) as i32);
                assert_eq!(ev.info, &rec[metadata_len..event_len]);
                let _ = ev.kind();
                at += event_len;
                assert_eq!(records.rest(), &data[at..]);
            }
            Err(e) => {
                failed = true;
                // The error describes the record at `at`, which `rest` still starts with.
                assert_eq!(records.rest(), rec);
                assert!(!e.to_string().is_empty());
                let _ = std::io::Error::from(e);
            }
        }
    }
    if !failed {
        assert!(
            records.rest().is_empty(),
            "stopped without an error before the end"
        );
    }
    assert!(
        records.next().is_none(),
        "the decoder resumed after stopping"
    );
}

/// `fdloop::dev::gpio::cdev::decode_edge_event`: `struct gpio_v2_line_event` records. The
/// buffer is decoded whole (only its first record counts) and record by record, as a read of
/// several events is.
pub fn gpio_event(data: &[u8]) {
    check_edge(data);
    for record in data.chunks(EDGE_EVENT_SIZE) {
        check_edge(record);
    }
}

fn check_edge(record: &[u8]) {
    let r = cdev::decode_edge_event(record);
    if record.len() < EDGE_EVENT_SIZE {
        let e = r.expect_err("a short record decoded");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        return;
    }
    let id = u32_at(record, 8);
    match r {
        Ok(ev) => {
            let kind = match id {
                1 => EdgeKind::Rising,
                2 => EdgeKind::Falling,
                other => panic!("event id {other} decoded"),
            };
            assert_eq!(ev.kind, kind);
            assert_eq!(ev.timestamp_ns, u64_at(record, 0));
            assert_eq!(ev.offset, u32_at(record, 12));
            assert_eq!(ev.seqno, u32_at(record, 16));
            assert_eq!(ev.line_seqno, u32_at(record, 20));
            // Bytes after the first record do not matter.
            let first = cdev::decode_edge_event(&record[..EDGE_EVENT_SIZE]).unwrap();
            assert_eq!(first, ev);
        }
        Err(e) => {
            assert!(id != 1 && id != 2, "event id {id} refused: {e}");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
    }
}

/// A check: decodes its input and asserts the decoder's promises (panics otherwise).
pub type Check = fn(&[u8]);

/// The checks, by fuzz-target name.
pub const TARGETS: [(&str, Check); 3] = [
    ("inotify_decode", inotify),
    ("fanotify_decode", fanotify),
    ("gpio_event_decode", gpio_event),
];

/// Well-formed (and a few malformed) inputs for a target, built in the machine's byte order
/// as the kernel writes them.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "inotify_decode" => inotify_seeds(),
        "fanotify_decode" => fanotify_seeds(),
        "gpio_event_decode" => gpio_seeds(),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn inotify_record(wd: i32, mask: u32, cookie: u32, name: &[u8]) -> Vec<u8> {
    // The kernel pads names with NULs to a multiple of the header's alignment.
    let len = if name.is_empty() {
        0
    } else {
        (name.len() + 1).next_multiple_of(INOTIFY_HEADER)
    };
    let mut v = Vec::new();
    for x in [wd as u32, mask, cookie, len as u32] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.extend_from_slice(name);
    v.resize(INOTIFY_HEADER + len, 0);
    v
}

fn inotify_seeds() -> Vec<Vec<u8>> {
    let create = inotify_record(1, 0x100, 0, b"hello.txt");
    let moved_from = inotify_record(1, 0x40, 7, b"a");
    let moved_to = inotify_record(2, 0x80 | 0x4000_0000, 7, b"directory-name");
    let ignored = inotify_record(3, 0x8000, 0, b"");
    let overflow = inotify_record(-1, 0x4000, 0, b"");
    let long = inotify_record(4, 0x2, 0, &[b'n'; 255]);
    let batch = [
        create.clone(),
        moved_from.clone(),
        moved_to.clone(),
        ignored.clone(),
        long.clone(),
    ]
    .concat();
    let truncated = batch[..batch.len() - 5].to_vec();
    vec![
        Vec::new(),
        create,
        moved_from,
        moved_to,
        ignored,
        overflow,
        long,
        batch,
        truncated,
    ]
}

fn fanotify_record(mask: u64, fd: i32, pid: i32, info: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&[3, 0]);
    v.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
    v.extend_from_slice(&mask.to_ne_bytes());
    v.extend_from_slice(&fd.to_ne_bytes());
    v.extend_from_slice(&pid.to_ne_bytes());
    v.extend_from_slice(info);
    v
}

fn fanotify_seeds() -> Vec<Vec<u8>> {
    let modify = fanotify_record(0x2, 5, 1234, &[]);
    let open_perm = fanotify_record(0x1_0000, 6, 99, &[]);
    let overflow = fanotify_record(0x4000, -1, 0, &[]);
    // A FAN_EVENT_INFO_TYPE_FID record (type 1, pad, len 24) with an 8-byte fsid and a handle.
    let mut fid = vec![1, 0];
    fid.extend_from_slice(&24u16.to_ne_bytes());
    fid.extend_from_slice(&[0xab; 8]);
    fid.extend_from_slice(&4u32.to_ne_bytes());
    fid.extend_from_slice(&1i32.to_ne_bytes());
    fid.extend_from_slice(&[0xcd; 4]);
    let with_fid = fanotify_record(0x100, -1, 42, &fid);
    let batch = [modify.clone(), with_fid.clone(), open_perm.clone()].concat();
    let mut bad_version = modify.clone();
    bad_version[4] = 2;
    let mut short_event_len = modify.clone();
    short_event_len[..4].copy_from_slice(&8u32.to_ne_bytes());
    let mut long_metadata = modify.clone();
    long_metadata[6..8].copy_from_slice(&200u16.to_ne_bytes());
    let truncated = batch[..batch.len() - 3].to_vec();
    vec![
        Vec::new(),
        modify,
        open_perm,
        overflow,
        with_fid,
        batch,
        bad_version,
        short_event_len,
        long_metadata,
        truncated,
    ]
}

fn gpio_record(timestamp: u64, id: u32, offset: u32, seqno: u32, line_seqno: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&timestamp.to_ne_bytes());
    for x in [id, offset, seqno, line_seqno] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.resize(EDGE_EVENT_SIZE, 0);
    v
}

fn gpio_seeds() -> Vec<Vec<u8>> {
    let rising = gpio_record(1_000_000_123, 1, 17, 1, 1);
    let falling = gpio_record(1_000_500_000, 2, 17, 2, 2);
    let unknown = gpio_record(5, 3, 0, 3, 1);
    let batch = [rising.clone(), falling.clone(), rising.clone()].concat();
    vec![
        Vec::new(),
        rising.clone(),
        falling,
        unknown,
        batch,
        rising[..EDGE_EVENT_SIZE - 1].to_vec(),
    ]
}

/// A small xorshift64* generator, so that the smoke runner needs no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// An input derived from the seeds: random bytes, or a seed (or two spliced) with a few
/// mutations — bit flips, interesting values written over a length or id field, insertions,
/// deletions and truncations.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(8) == 0 {
        let len = rng.below(600);
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    let mut v = seeds[rng.below(seeds.len())].clone();
    if rng.below(4) == 0 {
        let other = &seeds[rng.below(seeds.len())];
        let cut = rng.below(other.len() + 1);
        v.extend_from_slice(&other[cut..]);
    }
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if v.len() >= 4 => {
                let interesting: [u32; 10] =
                    [0, 1, 2, 3, 15, 16, 24, 48, u32::MAX, u32::MAX / 2 + 1];
                let x = interesting[rng.below(interesting.len())];
                let i = rng.below(v.len() - 3);
                v[i..i + 4].copy_from_slice(&x.to_ne_bytes());
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(16));
                v.drain(i..i + n);
            }
            4 => v.truncate(rng.below(v.len() + 1)),
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            _ => {}
        }
    }
    v
}
