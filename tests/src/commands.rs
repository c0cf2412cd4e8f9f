//! Running commands with a deadline; a timeout stops the whole process group.

use super::*;

/// Sets up a child so that it is killed when the spawning thread's process dies.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                // The parent already died.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion, killing it after `timeout` (then the result is an error).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    // Its own process group, so that a timeout stops what it started too.
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            stop_group(&mut child);
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Stops a child that leads its own process group, and everything in the group: SIGTERM
/// first (a script's EXIT trap stops what it started), SIGKILL after 5 s.
fn stop_group(child: &mut Child) {
    let group = child.id() as libc::pid_t;
    // SAFETY: signalling our own child's process group.
    unsafe { libc::killpg(group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above; whatever is left of the group.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = child.wait();
}

/// How long [`script`] waits: a script starts several processes (bench-memif.sh: four DPDK
/// processes on shared CPUs took 7 s alone and more than 30 s beside other tests).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `scripts/NAME ARGS…` of this repository with [`SCRIPT_TIMEOUT`].
pub fn script(name: &str, args: &[&str]) -> Output {
    let path = workspace_root().join("scripts").join(name);
    let mut cmd = Command::new(&path);
    cmd.args(args);
    run_with_timeout(&mut cmd, SCRIPT_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", path.display()))
}

/// Runs `lmas ARGS…` with [`COMMAND_TIMEOUT`].
pub fn lmas(args: &[&str]) -> Output {
    let bin = lmas_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()))
}
