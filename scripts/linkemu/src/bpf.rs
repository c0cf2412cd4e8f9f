//! The XDP random-loss program (`scripts/bpf/loss.c`, compiled by build.rs and embedded here),
//! loaded and attached through the system libbpf. All FFI of the crate lives in this module.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;

use anyhow::{bail, Context, Result};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loss.o"));

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

#[repr(C)]
struct BpfObject {
    _p: [u8; 0],
}
#[repr(C)]
struct BpfProgram {
    _p: [u8; 0],
}
#[repr(C)]
struct BpfMap {
    _p: [u8; 0],
}

#[link(name = "bpf")]
extern "C" {
    fn bpf_object__open_mem(buf: *const c_void, size: usize, opts: *const c_void)
        -> *mut BpfObject;
    fn bpf_object__load(obj: *mut BpfObject) -> c_int;
    fn bpf_object__close(obj: *mut BpfObject);
    fn bpf_object__find_program_by_name(
        obj: *const BpfObject,
        name: *const c_char,
    ) -> *mut BpfProgram;
    fn bpf_object__find_map_by_name(obj: *const BpfObject, name: *const c_char) -> *mut BpfMap;
    fn bpf_program__fd(prog: *const BpfProgram) -> c_int;
    fn bpf_map__fd(map: *const BpfMap) -> c_int;
    fn bpf_xdp_attach(ifindex: c_int, prog_fd: c_int, flags: u32, opts: *const c_void) -> c_int;
    fn bpf_xdp_detach(ifindex: c_int, flags: u32, opts: *const c_void) -> c_int;
    fn bpf_map_update_elem(
        fd: c_int,
        key: *const c_void,
        value: *const c_void,
        flags: u64,
    ) -> c_int;
    fn bpf_map_lookup_elem(fd: c_int, key: *const c_void, value: *mut c_void) -> c_int;
    fn libbpf_num_possible_cpus() -> c_int;
}

/// libbpf 1.x returns `-errno` from int functions.
fn check(rc: c_int, what: &str) -> Result<c_int> {
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc)).with_context(|| what.to_string())
    } else {
        Ok(rc)
    }
}

pub fn ifindex(dev: &str) -> Result<u32> {
    let name = CString::new(dev)?;
    // SAFETY: name is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        bail!("no such interface: {dev}");
    }
    Ok(idx)
}

/// Per-interface counters kept by the XDP program (summed over CPUs).
#[derive(Debug, Default, Clone, Copy)]
pub struct LossCounters {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
}

/// The loaded loss program; detaches from every interface it was attached to on drop.
pub struct LossProgram {
    obj: *mut BpfObject,
    prog_fd: c_int,
    cfg_fd: c_int,
    cnt_fd: c_int,
    ncpus: usize,
    attached: Vec<(u32, u32)>,
}

impl LossProgram {
    pub fn load() -> Result<LossProgram> {
        // SAFETY: OBJECT is a static buffer; libbpf copies what it needs from it.
        let obj = unsafe {
            bpf_object__open_mem(
                OBJECT.as_ptr() as *const c_void,
                OBJECT.len(),
                std::ptr::null(),
            )
        };
        if obj.is_null() {
            return Err(io::Error::last_os_error()).context("bpf_object__open_mem(loss.o)");
        }
        let mut me = LossProgram {
            obj,
            prog_fd: -1,
            cfg_fd: -1,
            cnt_fd: -1,
            ncpus: 1,
            attached: Vec::new(),
        };
        // SAFETY: obj is a valid object returned by libbpf (closed in Drop).
        check(unsafe { bpf_object__load(obj) }, "load XDP loss program")?;
        let prog = me.find_prog(c"linkemu_loss")?;
        // SAFETY: prog belongs to the loaded obj.
        me.prog_fd = check(unsafe { bpf_program__fd(prog) }, "program fd")?;
        me.cfg_fd = me.map_fd(c"linkemu_cfg")?;
        me.cnt_fd = me.map_fd(c"linkemu_cnt")?;
        // SAFETY: no arguments; returns a count or -errno.
        me.ncpus = check(unsafe { libbpf_num_possible_cpus() }, "possible cpus")? as usize;
        Ok(me)
    }

    fn find_prog(&self, name: &CStr) -> Result<*mut BpfProgram> {
        // SAFETY: self.obj is valid, name is NUL-terminated.
        let p = unsafe { bpf_object__find_program_by_name(self.obj, name.as_ptr()) };
        if p.is_null() {
            bail!("program {name:?} not in loss.o");
        }
        Ok(p)
    }

    fn map_fd(&self, name: &CStr) -> Result<c_int> {
        // SAFETY: self.obj is valid, name is NUL-terminated.
        let m = unsafe { bpf_object__find_map_by_name(self.obj, name.as_ptr()) };
        if m.is_null() {
            bail!("map {name:?} not in loss.o");
        }
        // SAFETY: m belongs to the loaded obj.
        check(unsafe { bpf_map__fd(m) }, "map fd")
    }

    /// Attaches to `ifindex` in native (driver) mode; falls back to generic mode, which runs
    /// after GRO and therefore drops whole aggregates (a warning is printed).
    pub fn attach(&mut self, ifindex: u32, dev: &str) -> Result<()> {
        if self.is_attached(ifindex) {
            return Ok(());
        }
        for (flags, mode) in [
            (XDP_FLAGS_DRV_MODE, "native"),
            (XDP_FLAGS_SKB_MODE, "generic"),
        ] {
            // SAFETY: valid prog fd; null opts are allowed.
            let rc =
                unsafe { bpf_xdp_attach(ifindex as c_int, self.prog_fd, flags, std::ptr::null()) };
            if rc == 0 {
                if flags == XDP_FLAGS_SKB_MODE {
                    eprintln!(
                        "linkemu: warning: {dev}: native XDP refused, using generic XDP \
                         (loss is applied after GRO: not faithful)"
                    );
                }
                self.attached.push((ifindex, flags));
                if self.counters(ifindex).packets == 0 {
                    self.init_counters(ifindex)?;
                }
                return Ok(());
            }
            eprintln!(
                "linkemu: {dev}: {mode} XDP attach failed: {}",
                io::Error::from_raw_os_error(-rc)
            );
        }
        bail!("cannot attach XDP loss program to {dev}")
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.iter().any(|&(i, _)| i == ifindex)
    }

    /// Detaches from `ifindex` (no-op when not attached).
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(pos) = self.attached.iter().position(|&(i, _)| i == ifindex) {
            let (_, flags) = self.attached.remove(pos);
            // SAFETY: detaching by ifindex; harmless if the interface is gone.
            unsafe { bpf_xdp_detach(ifindex as c_int, flags, std::ptr::null()) };
        }
    }

    /// Creates the (per-CPU) counter entry of `ifindex`; the program only updates entries.
    fn init_counters(&self, ifindex: u32) -> Result<()> {
        let zero = vec![[0u64; 4]; self.ncpus];
        // SAFETY: the value buffer holds ncpus values of 32 bytes, as a per-CPU update reads.
        let rc = unsafe {
            bpf_map_update_elem(
                self.cnt_fd,
                &ifindex as *const u32 as *const c_void,
                zero.as_ptr() as *const c_void,
                0,
            )
        };
        check(rc, "init linkemu_cnt").map(|_| ())
    }

    /// Sets the drop probability (0.0..=1.0) for packets arriving on `ifindex`.
    pub fn set_loss(&self, ifindex: u32, prob: f64) -> Result<()> {
        let threshold: u32 = if prob <= 0.0 {
            0
        } else if prob >= 1.0 {
            u32::MAX
        } else {
            (prob * 4294967296.0).round().min(u32::MAX as f64) as u32
        };
        let value: [u32; 2] = [threshold, 0];
        // SAFETY: key and value match the map's key/value sizes (u32 / struct loss_cfg).
        let rc = unsafe {
            bpf_map_update_elem(
                self.cfg_fd,
                &ifindex as *const u32 as *const c_void,
                value.as_ptr() as *const c_void,
                0,
            )
        };
        check(rc, "update linkemu_cfg").map(|_| ())
    }

    pub fn counters(&self, ifindex: u32) -> LossCounters {
        let mut vals = vec![[0u64; 4]; self.ncpus];
        // SAFETY: a per-CPU lookup writes ncpus values of 32 bytes (8-byte aligned); vals has
        // exactly that size.
        let rc = unsafe {
            bpf_map_lookup_elem(
                self.cnt_fd,
                &ifindex as *const u32 as *const c_void,
                vals.as_mut_ptr() as *mut c_void,
            )
        };
        let mut c = LossCounters::default();
        if rc == 0 {
            for v in &vals {
                c.packets += v[0];
                c.bytes += v[1];
                c.dropped += v[2];
                c.dropped_bytes += v[3];
            }
        }
        c
    }
}

impl Drop for LossProgram {
    fn drop(&mut self) {
        for &(ifindex, flags) in &self.attached {
            // SAFETY: detaching by ifindex; harmless if the interface is gone.
            unsafe { bpf_xdp_detach(ifindex as c_int, flags, std::ptr::null()) };
        }
        // SAFETY: obj came from bpf_object__open_mem and is closed exactly once.
        unsafe { bpf_object__close(self.obj) };
    }
}
