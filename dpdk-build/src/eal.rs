//! The Environment Abstraction Layer: init from an argument list, the lcores
//! it gave us, launching work on them, and the TSC clock.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;
use crate::Error;

/// Only one EAL per process, ever (DPDK cannot re-initialise after cleanup).
static STARTED: AtomicBool = AtomicBool::new(false);

/// An lcore id as the EAL numbers them (`-l`/`--lcores`).
pub type Lcore = u32;

/// The initialised EAL. Dropping it waits for every launched lcore and runs
/// `rte_eal_cleanup`, so every [`crate::Mbuf`], port and ring must be gone
/// by then.
pub struct Eal {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Eal {
    /// Initialises the EAL with `args` (without the program name), e.g.
    /// `["--no-huge", "-m", "512", "--no-pci", "-l", "0-3",
    /// "--vdev=net_af_packet0,iface=veth0"]`.
    pub fn init(args: &[String]) -> Result<Eal, Error> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::invalid(
                "rte_eal_init",
                "the EAL can be initialised once per process",
            ));
        }
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("lmas").expect("no NUL"));
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| {
                Error::invalid(
                    "rte_eal_init",
                    format!("argument {a:?} contains a NUL byte"),
                )
            })?);
        }
        // rte_eal_init may permute argv; give it pointers it can own for the
        // life of the process (leaked on purpose: DPDK keeps references).
        let argv: &'static mut [*mut std::ffi::c_char] = Box::leak(
            owned
                .into_iter()
                .map(CString::into_raw)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        // SAFETY: argv holds argc valid NUL-terminated strings that live forever.
        let ret = unsafe { sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(Error::last("rte_eal_init"));
        }
        Ok(Eal {
            _not_send: std::marker::PhantomData,
        })
    }

    /// The lcore running this (the main) thread.
    pub fn main_lcore(&self) -> Lcore {
        // SAFETY: valid after rte_eal_init.
        unsafe { sys::rte_get_main_lcore() }
    }

    /// Every enabled lcore other than the main one, in id order.
    pub fn worker_lcores(&self) -> Vec<Lcore> {
        let mut out = Vec::new();
        // SAFETY: iterating enabled lcores is valid after rte_eal_init;
        // RTE_MAX_LCORE bounds the walk.
        let mut i = unsafe { sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while i < sys::RTE_MAX_LCORE {
            out.push(i);
            i = unsafe { sys::rte_get_next_lcore(i, 1, 0) };
        }
        out
    }

    /// The NUMA socket of an lcore (for mempool placement).
    pub fn socket_of(&self, lcore: Lcore) -> i32 {
        // SAFETY: any id is accepted; unknown ones yield SOCKET_ID_ANY-ish values.
        unsafe { sys::rte_lcore_to_socket_id(lcore) as i32 }
    }

    /// Runs `f` on worker lcore `lcore`; its return value is what
    /// [`Eal::wait`] gives back.
    pub fn launch<F>(&self, lcore: Lcore, f: F) -> Result<(), Error>
    where
        F: FnOnce() -> i32 + Send + 'static,
    {
        type Job = Box<dyn FnOnce() -> i32 + Send>;
        extern "C" fn trampoline(arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the Box<Job> leaked below, handed over exactly once.
            let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
            // A panic must not unwind into C: report it as a failed lcore.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
        }
        let job: Box<Job> = Box::new(Box::new(f));
        let arg = Box::into_raw(job) as *mut c_void;
        // SAFETY: trampoline has the lcore_function_t signature and takes
        // ownership of `arg`.
        let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if ret != 0 {
            // Not launched: reclaim the job so it is dropped here.
            // SAFETY: DPDK did not take `arg`.
            drop(unsafe { Box::from_raw(arg as *mut Job) });
            return Err(Error::from_ret(
                format!("rte_eal_remote_launch(lcore {lcore})"),
                ret,
            ));
        }
        Ok(())
    }

    /// Waits for the job on `lcore` to return; its return value (0 if idle).
    pub fn wait(&self, lcore: Lcore) -> i32 {
        // SAFETY: valid for any worker lcore id after init.
        unsafe { sys::rte_eal_wait_lcore(lcore) }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: called once, from the main lcore; launched jobs are joined
        // first so no lcore touches freed memory.
        unsafe {
            sys::rte_eal_mp_wait_lcore();
            sys::rte_eal_cleanup();
        }
    }
}

/// The time-stamp counter: cheap, monotonic per core, [`tsc_hz`] ticks a second.
pub fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { sys::lmas_rdtsc() }
}

/// TSC ticks per second (measured by the EAL at init).
pub fn tsc_hz() -> u64 {
    // SAFETY: valid after rte_eal_init; returns 0 before.
    unsafe { sys::rte_get_tsc_hz() }
}
