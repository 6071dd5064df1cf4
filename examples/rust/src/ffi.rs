//! The part of include/migrationkit.h this example uses, written by hand.
//! Every struct is declared whole (all fields, in order) because the library
//! reads `struct_size` bytes of it; build.rs checks sizes and offsets against
//! the real header.

#![allow(dead_code)] // fields and constants kept for layout fidelity

use std::os::raw::{c_char, c_int, c_void};

pub const MK_PAGE_SIZE: u32 = 4096;
pub const MK_REGION_FRESH: u32 = 1 << 0;
pub const MK_LOG_INFO: c_int = 2;
pub const MK_ENOSPC: c_int = -15;

/// Opaque handles: only ever behind a pointer.
#[repr(C)]
pub struct MkSource {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct MkDest {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct MkBuffer {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct MkRegion {
    pub struct_size: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub size: u64,
    pub host_addr: *mut c_void,
    pub dirty_granularity: u64,
}

#[repr(C)]
pub struct MkSourceConfig {
    pub struct_size: u32,
    pub nr_vcpus: u32,
    pub transport_fd: i32,
    pub flags: u32,
    pub device_state_hint: u64,
    pub ack_timeout_ms: u64,
    pub auth_key: *const c_void,
    pub auth_key_len: u64,
}

pub type LogFn = unsafe extern "C" fn(user: *mut c_void, level: c_int, msg: *const c_char);

#[repr(C)]
pub struct MkSourceCallbacks {
    pub struct_size: u32,
    pub reserved: u32,
    pub user: *mut c_void,
    pub get_dirty_log: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            region: u32,
            bitmap: *mut u64,
            npages: u64,
        ) -> c_int,
    >,
    /// iov is `const mk_iovec *`; unused here (the fd transport).
    pub write:
        Option<unsafe extern "C" fn(user: *mut c_void, iov: *const c_void, iovcnt: c_int) -> c_int>,
    pub read:
        Option<unsafe extern "C" fn(user: *mut c_void, buf: *mut c_void, len: usize) -> c_int>,
    pub pause_vcpus: Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>,
    pub resume_vcpus: Option<unsafe extern "C" fn(user: *mut c_void) -> c_int>,
    pub kick_vcpu: Option<unsafe extern "C" fn(user: *mut c_void, vcpu: u32) -> c_int>,
    pub save_device_state:
        Option<unsafe extern "C" fn(user: *mut c_void, out: *mut MkBuffer) -> c_int>,
    pub device_state_size: Option<unsafe extern "C" fn(user: *mut c_void) -> u64>,
    pub log: Option<LogFn>,
    /// stats is `const mk_stats *`; unused here.
    pub progress: Option<unsafe extern "C" fn(user: *mut c_void, stats: *const c_void)>,
    pub get_vcpu_dirty_counts:
        Option<unsafe extern "C" fn(user: *mut c_void, counts: *mut u64, nr_vcpus: u32) -> c_int>,
}

#[repr(C)]
pub struct MkDestConfig {
    pub struct_size: u32,
    pub transport_fd: i32,
    pub flags: u32,
    pub reserved: u32,
    pub resume_cost_us: u64,
    pub auth_key: *const c_void,
    pub auth_key_len: u64,
}

#[repr(C)]
pub struct MkDestCallbacks {
    pub struct_size: u32,
    pub reserved: u32,
    pub user: *mut c_void,
    pub read: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            buf: *mut c_void,
            cap: usize,
            out_len: *mut usize,
        ) -> c_int,
    >,
    pub write:
        Option<unsafe extern "C" fn(user: *mut c_void, iov: *const c_void, iovcnt: c_int) -> c_int>,
    pub load_device_state:
        Option<unsafe extern "C" fn(user: *mut c_void, data: *const c_void, len: usize) -> c_int>,
    pub log: Option<LogFn>,
}

// Linked through build.rs (pkg-config's -l flag), not #[link], so that the
// .pc file stays the one place that names the library.
extern "C" {
    pub fn mk_version() -> *const c_char;
    pub fn mk_strerror(code: c_int) -> *const c_char;
    pub fn mk_last_error() -> *const c_char;
    pub fn mk_status_name(status: c_int) -> *const c_char;
    pub fn mk_region_init_sized(r: *mut MkRegion, size: usize) -> c_int;
    pub fn mk_buffer_append(buf: *mut MkBuffer, data: *const c_void, len: usize) -> c_int;

    pub fn mk_source_config_init_sized(cfg: *mut MkSourceConfig, size: usize) -> c_int;
    /// params is `const mk_params *`; NULL here (defaults).
    pub fn mk_source_create(
        out: *mut *mut MkSource,
        cfg: *const MkSourceConfig,
        callbacks: *const MkSourceCallbacks,
        params: *const c_void,
    ) -> c_int;
    pub fn mk_source_add_region(
        src: *mut MkSource,
        region: *const MkRegion,
        out_index: *mut u32,
    ) -> c_int;
    pub fn mk_source_set_param(
        src: *mut MkSource,
        name: *const c_char,
        value: *const c_char,
    ) -> c_int;
    pub fn mk_source_start(src: *mut MkSource) -> c_int;
    pub fn mk_source_wait(src: *mut MkSource, out_status: *mut c_int) -> c_int;
    pub fn mk_source_stats_json(
        src: *mut MkSource,
        buf: *mut c_char,
        cap: usize,
        out_len: *mut usize,
    ) -> c_int;
    pub fn mk_source_errmsg(src: *mut MkSource) -> *const c_char;
    pub fn mk_source_destroy(src: *mut MkSource);

    pub fn mk_dest_config_init_sized(cfg: *mut MkDestConfig, size: usize) -> c_int;
    pub fn mk_dest_create(
        out: *mut *mut MkDest,
        cfg: *const MkDestConfig,
        callbacks: *const MkDestCallbacks,
    ) -> c_int;
    pub fn mk_dest_add_region(
        dst: *mut MkDest,
        region: *const MkRegion,
        out_index: *mut u32,
    ) -> c_int;
    pub fn mk_dest_run(dst: *mut MkDest) -> c_int;
    pub fn mk_dest_errmsg(dst: *mut MkDest) -> *const c_char;
    pub fn mk_dest_destroy(dst: *mut MkDest);
}
