//! A running `lmas run`: logs, status, signals, restarts; killed on drop.

use super::*;

/// A running `lmas run --config FILE`, stdout and stderr going to a log file.
///
/// Dropping it sends SIGTERM, waits up to 5 s, then SIGKILLs. The child also gets SIGKILL if the
/// test process dies first (`PR_SET_PDEATHSIG`), so no gateway outlives its test.
pub struct Gateway {
    pub name: String,
    pub config: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    /// The network namespace it runs in (kept alive while the gateway is).
    netns: Option<Arc<netns::NetNs>>,
}

impl Gateway {
    /// Starts `lmas run --config CONFIG` with `RUST_LOG` from `LMAS_TEST_RUST_LOG` (default
    /// `info`), logging to `LOG`.
    pub fn spawn(name: &str, config: &Path, log_path: &Path) -> Gateway {
        Gateway::spawn_in(name, config, log_path, None)
    }

    /// [`Gateway::spawn`] inside a network namespace (`None`: this process's).
    pub fn spawn_in(
        name: &str,
        config: &Path,
        log_path: &Path,
        netns: Option<Arc<netns::NetNs>>,
    ) -> Gateway {
        let bin = lmas_bin();
        let log =
            File::create(log_path).unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        let rust_log = std::env::var("LMAS_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        if let Some(ns) = &netns {
            ns.enter_on_exec(&mut cmd);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} run --config {}: {e}",
                bin.display(),
                config.display()
            )
        });
        Gateway {
            name: name.to_string(),
            config: config.to_path_buf(),
            log_path: log_path.to_path_buf(),
            child: Some(child),
            exit: None,
            netns,
        }
    }

    /// Another gateway with the same name, config and namespace (a restart), logging to
    /// `log_path`.
    pub fn spawn_again(&self, log_path: &Path) -> Gateway {
        Gateway::spawn_in(&self.name, &self.config, log_path, self.netns.clone())
    }

    /// SIGKILL (no clean shutdown), and reap it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exit = c.wait().ok();
        }
        self.exit
    }

    /// `lmas status --config CONFIG --json` (through its admin socket), parsed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let bin = lmas_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("status")
            .arg("--config")
            .arg(&self.config)
            .arg("--json");
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
            .map_err(|e| format!("{}: lmas status: {e}", self.name))?;
        if !out.status.success() {
            return Err(format!(
                "{}: lmas status failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: lmas status --json: {e}", self.name))
    }

    /// The counters from [`Gateway::status`].
    pub fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let v = self.status()?;
        let counters = v
            .get("counters")
            .and_then(|c| c.as_object())
            .ok_or_else(|| format!("{}: lmas status --json has no counters: {v}", self.name))?;
        Ok(counters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect())
    }

    /// The gauges of `lmas status --json` (levels such as free packet buffers; DPDK only).
    pub fn gauges(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let v = self.status()?;
        Ok(v.get("gauges")
            .and_then(|c| c.as_object())
            .map(|g| {
                g.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One counter from [`Gateway::counters`].
    pub fn counter(&self, name: &str) -> Result<u64, String> {
        let counters = self.counters()?;
        counters.get(name).copied().ok_or_else(|| {
            format!(
                "{}: lmas status reports no counter {name:?} (it has {:?})",
                self.name,
                counters.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Current resident set size (VmRSS) in KiB, while the process runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process still runs (records its exit status otherwise).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// The first log line containing every one of `needles`, if any.
    pub fn find_line(&self, needles: &[&str]) -> Option<String> {
        self.log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    }

    /// Waits until a log line contains every one of `needles`; returns that line. Fails early if
    /// the gateway exits.
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.find_line(needles) {
                return Ok(l);
            }
            if !self.is_running() {
                // One last look: the line may have been written just before exiting.
                if let Some(l) = self.find_line(needles) {
                    return Ok(l);
                }
                return Err(format!(
                    "{} exited ({}) before logging a line with {needles:?}; log:\n{}",
                    self.name,
                    self.exit.map(|s| s.to_string()).unwrap_or_default(),
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged no line with {needles:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines contain every one of `needles`.
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until at least `count` log lines contain `needle`.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_lines(&[needle]) >= count {
                return Ok(());
            }
            if !self.is_running() && self.count_lines(&[needle]) < count {
                return Err(format!(
                    "{} exited ({}) before logging {needle:?} {count} times; log:\n{}",
                    self.name,
                    self.exit.map(|s| s.to_string()).unwrap_or_default(),
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged {needle:?} {} times, not {count}, within {timeout:?}; log:\n{}",
                    self.name,
                    self.count_lines(&[needle]),
                    self.log_tail(40)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Gateway::wait_for_line`] with one substring.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(&[needle], timeout)
    }

    /// Like [`Gateway::wait_for_log`] but panics on failure.
    pub fn expect_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Peak resident set size (VmHWM) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends signal `sig` (e.g. `libc::SIGHUP`) to the running gateway.
    pub fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold the Child).
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(format!(
                "{}: kill({sig}): {}",
                self.name,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit by itself; its exit status, or an error
    /// (the gateway keeps running).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        while self.is_running() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} still running {within:?} later; log:\n{}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.exit
            .ok_or_else(|| format!("{}: exit status unknown", self.name))
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; an error (after SIGKILL)
    /// if it does not.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let Some(mut c) = self.child.take() else {
            return self
                .exit
                .ok_or_else(|| format!("{} was not running", self.name));
        };
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return Ok(st);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = c.kill();
                    self.exit = c.wait().ok();
                    return Err(format!(
                        "{} did not exit within {within:?} of SIGTERM (killed); log:\n{}",
                        self.name,
                        self.log_tail(20)
                    ));
                }
            }
        }
    }

    /// Stops the gateway for a test's teardown: SIGTERM (which drains open sessions), a second
    /// SIGTERM after 1 s (which resets them at once), SIGKILL after 5 s. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            let mut signals = 0;
            let st = loop {
                let due = match signals {
                    0 => Some(Duration::ZERO),
                    1 => Some(Duration::from_secs(1)),
                    _ => None,
                };
                if due.is_some_and(|d| start.elapsed() >= d) {
                    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
                    unsafe {
                        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                    }
                    signals += 1;
                }
                match c.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        break c.wait().ok();
                    }
                }
            };
            self.exit = st;
        }
        self.exit
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}
