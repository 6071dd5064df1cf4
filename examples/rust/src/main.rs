//! inprocess-migrate: the Rust twin of examples/c/inprocess_migrate.c.
//!
//! A "guest" is 256 MiB of memory that a writer thread (the vCPU) keeps
//! dirtying. It is live-migrated to a second buffer through a socketpair:
//! the source handle runs on the library's migration thread, the destination
//! loads on a thread of ours. At the end both buffers, and the write count
//! carried as device state, must be equal. Exit status 1 on any difference
//! or error.

mod ffi;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

const GUEST_SIZE: usize = 256 << 20;
const PAGE: usize = ffi::MK_PAGE_SIZE as usize;
const GUEST_PAGES: usize = GUEST_SIZE / PAGE;
const WORDS: usize = (GUEST_PAGES + 63) / 64;
/// The writer dirties pages of the first 8 MiB only, like the C example.
const WORKING_SET_PAGES: u64 = (8 << 20) / PAGE as u64;

// --- Small safe layer over the C API ----------------------------------------

struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the library returns NUL-terminated strings valid until the
    // next call on the same handle/thread; we copy at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// rc == 0, or an error carrying the code's text and the library's message.
fn check(rc: c_int, what: &str, errmsg: impl FnOnce() -> String) -> Result<(), Error> {
    if rc == 0 {
        return Ok(());
    }
    let code = text(unsafe { ffi::mk_strerror(rc) });
    Err(Error(format!("{} failed: {} ({})", what, code, errmsg())))
}

fn region(mem: &PageMem, flags: u32) -> ffi::MkRegion {
    // SAFETY: zeroed is a valid MkRegion (null pointer, zero sizes); the
    // init call then sets struct_size and the defaults.
    let mut r: ffi::MkRegion = unsafe { std::mem::zeroed() };
    unsafe { ffi::mk_region_init_sized(&mut r, std::mem::size_of::<ffi::MkRegion>()) };
    r.size = mem.len as u64;
    r.host_addr = mem.ptr.as_ptr() as *mut c_void;
    r.flags = flags;
    r
}

/// A source handle; destroyed (cancelled and joined if running) on drop.
/// The lifetime ties it to the `user` data its callbacks receive.
struct Source<'a> {
    raw: NonNull<ffi::MkSource>,
    _user: PhantomData<&'a ()>,
}

impl<'a> Source<'a> {
    fn create(
        cfg: &ffi::MkSourceConfig,
        mut cb: ffi::MkSourceCallbacks,
        user: &'a Guest,
    ) -> Result<Self, Error> {
        cb.user = user as *const Guest as *mut c_void;
        let mut raw = ptr::null_mut();
        let rc = unsafe { ffi::mk_source_create(&mut raw, cfg, &cb, ptr::null()) };
        check(rc, "mk_source_create", || {
            text(unsafe { ffi::mk_last_error() })
        })?;
        Ok(Source {
            raw: NonNull::new(raw).expect("mk_source_create returned 0 and no handle"),
            _user: PhantomData,
        })
    }
    fn errmsg(&self) -> String {
        text(unsafe { ffi::mk_source_errmsg(self.raw.as_ptr()) })
    }
    fn check(&self, rc: c_int, what: &str) -> Result<(), Error> {
        check(rc, what, || self.errmsg())
    }
    fn add_region(&self, r: &ffi::MkRegion) -> Result<(), Error> {
        self.check(
            unsafe { ffi::mk_source_add_region(self.raw.as_ptr(), r, ptr::null_mut()) },
            "mk_source_add_region",
        )
    }
    fn set_param(&self, name: &str, value: &str) -> Result<(), Error> {
        let (n, v) = (CString::new(name).unwrap(), CString::new(value).unwrap());
        let rc = unsafe { ffi::mk_source_set_param(self.raw.as_ptr(), n.as_ptr(), v.as_ptr()) };
        self.check(rc, &format!("set {}", name))
    }
    fn start(&self) -> Result<(), Error> {
        self.check(
            unsafe { ffi::mk_source_start(self.raw.as_ptr()) },
            "mk_source_start",
        )
    }
    /// (0 or the MK_E* code, final status)
    fn wait(&self) -> (c_int, c_int) {
        let mut status = 0;
        let rc = unsafe { ffi::mk_source_wait(self.raw.as_ptr(), &mut status) };
        (rc, status)
    }
    fn stats_json(&self) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let mut len = 0usize;
            let rc = unsafe {
                ffi::mk_source_stats_json(
                    self.raw.as_ptr(),
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len(),
                    &mut len,
                )
            };
            match rc {
                0 => return String::from_utf8_lossy(&buf[..len]).into_owned(),
                ffi::MK_ENOSPC if len > buf.len() => buf.resize(len, 0),
                _ => return format!("(no stats: {})", self.errmsg()),
            }
        }
    }
}

impl Drop for Source<'_> {
    fn drop(&mut self) {
        unsafe { ffi::mk_source_destroy(self.raw.as_ptr()) }
    }
}

/// A destination handle; destroyed on drop, which the borrow of `run`'s
/// thread (std::thread::scope) keeps from racing with mk_dest_run.
struct Dest<'a> {
    raw: NonNull<ffi::MkDest>,
    _user: PhantomData<&'a ()>,
}

// SAFETY: the header allows every mk_dest_* call from any thread,
// concurrently, except destroy (done by Drop, which needs ownership).
unsafe impl Send for Dest<'_> {}
unsafe impl Sync for Dest<'_> {}

impl<'a> Dest<'a> {
    fn create(
        cfg: &ffi::MkDestConfig,
        mut cb: ffi::MkDestCallbacks,
        user: &'a Loaded,
    ) -> Result<Self, Error> {
        cb.user = user as *const Loaded as *mut c_void;
        let mut raw = ptr::null_mut();
        let rc = unsafe { ffi::mk_dest_create(&mut raw, cfg, &cb) };
        check(rc, "mk_dest_create", || {
            text(unsafe { ffi::mk_last_error() })
        })?;
        Ok(Dest {
            raw: NonNull::new(raw).expect("mk_dest_create returned 0 and no handle"),
            _user: PhantomData,
        })
    }
    fn errmsg(&self) -> String {
        text(unsafe { ffi::mk_dest_errmsg(self.raw.as_ptr()) })
    }
    fn add_region(&self, r: &ffi::MkRegion) -> Result<(), Error> {
        let rc = unsafe { ffi::mk_dest_add_region(self.raw.as_ptr(), r, ptr::null_mut()) };
        check(rc, "mk_dest_add_region", || self.errmsg())
    }
    fn run(&self) -> Result<(), Error> {
        check(
            unsafe { ffi::mk_dest_run(self.raw.as_ptr()) },
            "mk_dest_run",
            || self.errmsg(),
        )
    }
}

impl Drop for Dest<'_> {
    fn drop(&mut self) {
        unsafe { ffi::mk_dest_destroy(self.raw.as_ptr()) }
    }
}

// --- Guest memory -------------------------------------------------------------

/// Page-aligned, zero-filled memory (the library wants MK_PAGE_SIZE-aligned
/// regions; MK_REGION_FRESH wants zeros). While threads share it, it is
/// only touched through atomics: the library reads and writes it
/// concurrently from its own threads.
struct PageMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: shared access goes through `cells` (atomics) only; plain bytes
// need `&mut self`.
unsafe impl Send for PageMem {}
unsafe impl Sync for PageMem {}

impl PageMem {
    fn zeroed(len: usize) -> Result<Self, Error> {
        let layout = Layout::from_size_align(len, PAGE).unwrap();
        let p = unsafe { alloc_zeroed(layout) };
        NonNull::new(p)
            .map(|ptr| PageMem { ptr, len })
            .ok_or_else(|| Error(format!("cannot allocate {} bytes", len)))
    }
    fn cells(&self) -> &[AtomicU8] {
        // SAFETY: AtomicU8 has the size and alignment of u8.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const AtomicU8, self.len) }
    }
    fn bytes(&mut self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageMem {
    fn drop(&mut self) {
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align(self.len, PAGE).unwrap(),
            )
        }
    }
}

// --- The source side: guest, vCPU and its callbacks ----------------------------

struct Guest {
    mem: PageMem,
    dirty: Vec<AtomicU64>, // the "dirty log" the writer keeps, one bit a page
    pause_requested: AtomicBool,
    paused: AtomicBool,
    stop: AtomicBool,
    writes: AtomicU64,
}

impl Guest {
    /// The vCPU: writes a counter into pseudo-random pages of the working
    /// set, at a paced rate, and honours pause requests.
    fn run_vcpu(&self) {
        let mem = self.mem.cells();
        let mut x: u64 = 88172645463325252;
        while !self.stop.load(SeqCst) {
            if self.pause_requested.load(SeqCst) {
                self.paused.store(true, SeqCst);
                while self.pause_requested.load(SeqCst) && !self.stop.load(SeqCst) {
                    thread::sleep(Duration::from_millis(1));
                }
                self.paused.store(false, SeqCst);
                continue;
            }
            for _ in 0..256 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let page = x % WORKING_SET_PAGES;
                let off = page as usize * PAGE + ((x >> 40) % PAGE as u64) as usize;
                let n = self.writes.fetch_add(1, SeqCst) + 1;
                // The dirty bit goes up after the write: the library must
                // never see the bit without the data.
                mem[off].store(n as u8, SeqCst);
                self.dirty[page as usize / 64].fetch_or(1 << (page % 64), SeqCst);
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

unsafe extern "C" fn get_dirty_log(
    user: *mut c_void,
    region: u32,
    bitmap: *mut u64,
    npages: u64,
) -> c_int {
    let g = &*(user as *const Guest);
    if region != 0 || npages != GUEST_PAGES as u64 {
        return -1;
    }
    let bitmap = std::slice::from_raw_parts_mut(bitmap, WORDS);
    for (out, word) in bitmap.iter_mut().zip(&g.dirty) {
        *out |= word.swap(0, SeqCst);
    }
    0
}

unsafe extern "C" fn pause_vcpus(user: *mut c_void) -> c_int {
    let g = &*(user as *const Guest);
    g.pause_requested.store(true, SeqCst);
    while !g.paused.load(SeqCst) {
        thread::yield_now();
    }
    0
}

unsafe extern "C" fn resume_vcpus(user: *mut c_void) -> c_int {
    let g = &*(user as *const Guest);
    g.pause_requested.store(false, SeqCst);
    0
}

unsafe extern "C" fn save_device_state(user: *mut c_void, out: *mut ffi::MkBuffer) -> c_int {
    let g = &*(user as *const Guest);
    let writes = g.writes.load(SeqCst).to_ne_bytes();
    ffi::mk_buffer_append(out, writes.as_ptr() as *const c_void, writes.len())
}

unsafe extern "C" fn log(_user: *mut c_void, level: c_int, msg: *const c_char) {
    if level <= ffi::MK_LOG_INFO {
        eprintln!("  [mk] {}", text(msg));
    }
}

// --- The destination side ----------------------------------------------------

struct Loaded {
    mem: PageMem,
    writes: AtomicU64,
}

unsafe extern "C" fn load_device_state(
    user: *mut c_void,
    data: *const c_void,
    len: usize,
) -> c_int {
    let d = &*(user as *const Loaded);
    if len != 8 {
        return -1;
    }
    d.writes
        .store(ptr::read_unaligned(data as *const u64), SeqCst);
    0
}

/// Runs the closure when dropped: unblocks the other threads on every way
/// out of the migration, so a failure cannot leave the scope waiting.
struct OnExit<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnExit<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

// --- main --------------------------------------------------------------------

fn field_layout_mismatches() -> Vec<String> {
    macro_rules! field_offset {
        ($t:ty, $f:ident) => {{
            let u = std::mem::MaybeUninit::<$t>::uninit();
            let base = u.as_ptr();
            // SAFETY: addr_of! takes the field's address without reading it.
            (unsafe { ptr::addr_of!((*base).$f) } as usize) - base as usize
        }};
    }
    let table: Vec<(&str, i64, i64)> = include!(concat!(env!("OUT_DIR"), "/layout.rs"));
    table
        .into_iter()
        .filter(|&(_, rust, c)| rust != c)
        .map(|(what, rust, c)| format!("{}: Rust {} vs C {}", what, rust, c))
        .collect()
}

fn run() -> Result<bool, Error> {
    let bad = field_layout_mismatches();
    if !bad.is_empty() {
        return Err(Error(format!(
            "src/ffi.rs does not match migrationkit.h:\n  {}",
            bad.join("\n  ")
        )));
    }
    println!(
        "libmigrationkit {} (Rust consumer)",
        text(unsafe { ffi::mk_version() })
    );

    let (src_sock, dst_sock) =
        UnixStream::pair().map_err(|e| Error(format!("socketpair: {}", e)))?;
    let guest = Guest {
        mem: PageMem::zeroed(GUEST_SIZE)?,
        dirty: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        pause_requested: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        writes: AtomicU64::new(0),
    };
    let mut loaded = Loaded {
        mem: PageMem::zeroed(GUEST_SIZE)?,
        writes: AtomicU64::new(0),
    };
    // Half the guest has data, half is zero.
    for (i, cell) in guest.mem.cells()[..GUEST_SIZE / 2]
        .iter()
        .enumerate()
        .step_by(64)
    {
        cell.store((i >> 12) as u8, SeqCst);
    }

    let mut dcfg: ffi::MkDestConfig = unsafe { std::mem::zeroed() };
    unsafe { ffi::mk_dest_config_init_sized(&mut dcfg, std::mem::size_of::<ffi::MkDestConfig>()) };
    dcfg.transport_fd = dst_sock.as_raw_fd();
    let dcb = ffi::MkDestCallbacks {
        struct_size: std::mem::size_of::<ffi::MkDestCallbacks>() as u32,
        reserved: 0,
        user: ptr::null_mut(),
        read: None,
        write: None,
        load_device_state: Some(load_device_state),
        log: Some(log),
    };
    let dest = Dest::create(&dcfg, dcb, &loaded)?;
    // Fresh zeroed memory, written only by the loader.
    dest.add_region(&region(&loaded.mem, ffi::MK_REGION_FRESH))?;

    let mut cfg: ffi::MkSourceConfig = unsafe { std::mem::zeroed() };
    unsafe {
        ffi::mk_source_config_init_sized(&mut cfg, std::mem::size_of::<ffi::MkSourceConfig>())
    };
    cfg.transport_fd = src_sock.as_raw_fd();
    let cb = ffi::MkSourceCallbacks {
        struct_size: std::mem::size_of::<ffi::MkSourceCallbacks>() as u32,
        reserved: 0,
        user: ptr::null_mut(),
        get_dirty_log: Some(get_dirty_log),
        write: None,
        read: None,
        pause_vcpus: Some(pause_vcpus),
        resume_vcpus: Some(resume_vcpus),
        kick_vcpu: None,
        save_device_state: Some(save_device_state),
        device_state_size: None,
        log: Some(log),
        progress: None,
        get_vcpu_dirty_counts: None,
    };
    let src = Source::create(&cfg, cb, &guest)?;
    src.add_region(&region(&guest.mem, 0))?;
    src.set_param("downtime-limit", "50")?;

    let (rc, status, loaded_rc) = thread::scope(|s| {
        let _unblock = OnExit(|| {
            guest.stop.store(true, SeqCst);
            // The destination sees the end of the stream and returns.
            let _ = src_sock.shutdown(Shutdown::Both);
        });
        s.spawn(|| guest.run_vcpu());
        let loader = s.spawn(|| dest.run());
        src.start()?;
        let (rc, status) = src.wait();
        let loaded_rc = loader.join().expect("destination thread panicked");
        Ok::<_, Error>((rc, status, loaded_rc))
    })?;

    let status_name = text(unsafe { ffi::mk_status_name(status) });
    println!(
        "source: {} ({})\n{}",
        status_name,
        if rc == 0 {
            "ok".to_string()
        } else {
            src.errmsg()
        },
        src.stats_json()
    );
    match &loaded_rc {
        Ok(()) => println!("destination: loaded"),
        Err(e) => println!("destination: {}", e),
    }
    src.check(rc, "migration")?;
    loaded_rc?;
    // The handles hold pointers into both buffers: gone before we read them.
    drop(src);
    drop(dest);

    // The guest stayed paused after completion, so the copies must match.
    let (guest_writes, carried) = (guest.writes.load(SeqCst), loaded.writes.load(SeqCst));
    let mut guest = guest;
    let same = guest.mem.bytes() == loaded.mem.bytes() && guest_writes == carried;
    println!(
        "buffers {} ({} guest writes, device state carried {})",
        if same { "EQUAL" } else { "DIFFER" },
        guest_writes,
        carried
    );
    Ok(same)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("inprocess-migrate: {}", e);
            ExitCode::FAILURE
        }
    }
}
