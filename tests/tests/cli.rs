//! `lmas keygen` and `lmas check-config` (and `lmas run` on a bad config).
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lmas_tests::{keygen, lmas, lmas_bin, pub_path, run_with_timeout, temp_dir};

#[test]
fn keygen_writes_private_key_0600_and_prints_public_key() {
    let (dir, _tmp) = temp_dir("lmas-e2e-keygen-");
    let path = dir.join("gw.key");
    let kp = keygen(&path); // checks stdout == PATH.pub
    let mode = fs::metadata(&path)
        .expect("private key file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "mode of the private key file is {mode:o}");
    let pub_text = fs::read_to_string(pub_path(&path)).unwrap();
    assert!(
        pub_text.ends_with('\n'),
        "PATH.pub must end with a newline: {pub_text:?}"
    );
    let is_b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    };
    assert!(
        is_b64(&kp.public),
        "public key is not base64: {:?}",
        kp.public
    );
    let private = fs::read_to_string(&path).unwrap();
    assert!(is_b64(private.trim()), "private key file is not base64");
    assert_ne!(
        private.trim(),
        kp.public,
        "private key equals the public key"
    );
    let other = keygen(&dir.join("gw2.key"));
    assert_ne!(other.public, kp.public, "two keygens made the same key");
}

/// A valid pair of configs in `dir` (keys made by keygen, relative paths). Returns their paths.
fn valid_configs(dir: &Path) -> (PathBuf, PathBuf) {
    let a = keygen(&dir.join("gw-a.key"));
    let b = keygen(&dir.join("gw-b.key"));
    let a_toml = format!(
        r#"[gateway]
name = "gw-a"
private_key_file = "gw-a.key"

[peer]
name = "gw-b"
public_key = "{}"
connect = "127.0.0.1:7700"

[wan]
data_flows = 8

[[ingress]]
mode = "listen"
bind = "127.0.0.1:6000"
target = "127.0.0.1:5000"
"#,
        b.public
    );
    let b_toml = format!(
        r#"[gateway]
name = "gw-b"
private_key_file = "gw-b.key"
tunnel_listen = "127.0.0.1:7700"

[peer]
name = "gw-a"
public_key = "{}"

[wan]
data_flows = 8
congestion = "cubic"

[egress]
allow = ["127.0.0.1:5000", "127.0.0.1:*", "127.0.0.0/8:5001"]

[limits]
session_window_bytes = 33554432
global_buffer_bytes = 268435456
"#,
        a.public
    );
    let ap = dir.join("gw-a.toml");
    let bp = dir.join("gw-b.toml");
    fs::write(&ap, a_toml).unwrap();
    fs::write(&bp, b_toml).unwrap();
    (ap, bp)
}

/// Runs `lmas check-config FILE` from `/` (so relative paths must resolve against the
/// config's directory, not the working directory).
fn check_config(file: &Path) -> Output {
    let mut cmd = Command::new(lmas_bin());
    cmd.arg("check-config").arg(file).current_dir("/");
    run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("run lmas check-config")
}

#[test]
fn check_config_accepts_valid_configs() {
    let (dir, _tmp) = temp_dir("lmas-e2e-config-");
    let (a, b) = valid_configs(&dir);
    for f in [a, b] {
        let out = check_config(&f);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "check-config {} failed ({}):\n{stdout}{stderr}",
            f.display(),
            out.status
        );
        let want = format!("{}: ok", f.display());
        assert!(stdout.contains(&want), "stdout {stdout:?} lacks {want:?}");
    }
}

/// Expects `check-config` to fail with an `error:` line naming `file`; returns stderr and that
/// line.
fn expect_error(file: &Path, case: &str) -> (String, String) {
    let out = check_config(file);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{case}: check-config {} exited 0:\nstdout: {stdout}\nstderr: {stderr}",
        file.display()
    );
    assert!(
        !stdout.contains(": ok"),
        "{case}: check-config said ok on failure: {stdout}"
    );
    let file_s = file.display().to_string();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{case}: no line starting with `error:` on stderr:\n{stderr}"))
        .to_string();
    assert!(
        line.contains(&file_s),
        "{case}: the error line does not name the file {file_s}:\n{stderr}"
    );
    (stderr, line)
}

/// Writes the valid A config with `edit` applied, in a fresh file.
fn broken(dir: &Path, name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = fs::read_to_string(dir.join("gw-a.toml")).unwrap();
    let new = edit(&text);
    assert_ne!(new, text, "{name}: the edit changed nothing");
    let p = dir.join(name);
    fs::write(&p, new).unwrap();
    p
}

#[test]
fn check_config_missing_file() {
    let (dir, _tmp) = temp_dir("lmas-e2e-config-");
    let missing = dir.join("does-not-exist.toml");
    expect_error(&missing, "missing file");
}

#[test]
fn check_config_toml_syntax_error_gives_line() {
    let (dir, _tmp) = temp_dir("lmas-e2e-config-");
    valid_configs(&dir);
    // Line 2 loses its closing quote.
    let f = broken(&dir, "syntax.toml", |t| {
        t.replacen("name = \"gw-a\"", "name = \"gw-a", 1)
    });
    let (stderr, _) = expect_error(&f, "TOML syntax error");
    assert!(
        stderr.contains("line 2") || stderr.contains(":2:"),
        "TOML syntax error: stderr does not give line 2:\n{stderr}"
    );
}

/// Each case: (file name, description, edit, text that must name the field, strict) — strict
/// means the field must be on the `error:` line itself, else anywhere on stderr.
type Case = (
    &'static str,
    &'static str,
    fn(&str) -> String,
    &'static str,
    bool,
);

#[test]
fn check_config_names_the_offending_field() {
    let (dir, _tmp) = temp_dir("lmas-e2e-config-");
    valid_configs(&dir);
    let cases: Vec<Case> = vec![
        (
            "unknown-field.toml",
            "unknown field in [wan]",
            |t| t.replace("data_flows = 8", "data_flows = 8\nbogus_knob = 1"),
            "bogus_knob",
            true,
        ),
        (
            "unknown-section.toml",
            "unknown section",
            |t| format!("{t}\n[bogus_section]\nx = 1\n"),
            "bogus_section",
            true,
        ),
        (
            "missing-key-file.toml",
            "private key file missing",
            |t| {
                t.replace(
                    "private_key_file = \"gw-a.key\"",
                    "private_key_file = \"nope.key\"",
                )
            },
            "private_key_file",
            true,
        ),
        (
            "flows-0.toml",
            "data_flows = 0",
            |t| t.replace("data_flows = 8", "data_flows = 0"),
            "wan.data_flows",
            true,
        ),
        (
            "flows-65.toml",
            "data_flows = 65",
            |t| t.replace("data_flows = 8", "data_flows = 65"),
            "wan.data_flows",
            true,
        ),
        (
            "flows-type.toml",
            "data_flows of the wrong type",
            |t| t.replace("data_flows = 8", "data_flows = \"eight\""),
            "data_flows",
            true,
        ),
        (
            "bad-bind.toml",
            "bad ingress bind address",
            |t| t.replace("bind = \"127.0.0.1:6000\"", "bind = \"127.0.0.1:notaport\""),
            "bind",
            true,
        ),
        (
            "bad-target.toml",
            "bad ingress target address",
            |t| t.replace("target = \"127.0.0.1:5000\"", "target = \"nowhere\""),
            "target",
            true,
        ),
        (
            "bad-connect.toml",
            "bad peer.connect address",
            |t| {
                t.replace(
                    "connect = \"127.0.0.1:7700\"",
                    "connect = \"300.0.0.1:7700\"",
                )
            },
            "connect",
            true,
        ),
        (
            "bad-public-key.toml",
            "peer.public_key not base64",
            |t| {
                let start = t.find("public_key = \"").unwrap();
                let end = t[start..].find('\n').unwrap() + start;
                format!("{}public_key = \"not a key!\"{}", &t[..start], &t[end..])
            },
            "public_key",
            true,
        ),
        (
            "bad-allow.toml",
            "bad egress.allow entry",
            |t| format!("{t}\n[egress]\nallow = [\"127.0.0.1:5000\", \"not-an-address\"]\n"),
            "allow",
            true,
        ),
        (
            "bad-tunnel-listen.toml",
            "bad gateway.tunnel_listen",
            |t| {
                t.replace(
                    "private_key_file = \"gw-a.key\"",
                    "private_key_file = \"gw-a.key\"\ntunnel_listen = \"127.0.0.1:99999\"",
                )
            },
            "tunnel_listen",
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, case, edit, field, strict) in cases {
        let f = broken(&dir, name, edit);
        let r = std::panic::catch_unwind(|| expect_error(&f, case));
        match r {
            Err(e) => failures.push(
                e.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| format!("{case}: panicked")),
            ),
            Ok((stderr, line)) => {
                let named = if strict {
                    line.contains(field)
                } else {
                    stderr.contains(field)
                };
                if !named {
                    failures.push(format!(
                        "{case}: the error does not name `{field}`{}:\n{stderr}",
                        if strict { " on the error: line" } else { "" }
                    ));
                } else {
                    eprintln!("{case}: {line}");
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the broken configs were not reported as they should be:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn run_refuses_a_bad_config() {
    let (dir, _tmp) = temp_dir("lmas-e2e-config-");
    valid_configs(&dir);
    let f = broken(&dir, "flows-0.toml", |t| {
        t.replace("data_flows = 8", "data_flows = 0")
    });
    let mut cmd = Command::new(lmas_bin());
    cmd.arg("run").arg("--config").arg(&f);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10))
        .expect("lmas run with a bad config must exit on its own");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "lmas run exited 0 on a bad config:\n{stderr}"
    );
    assert!(
        stderr.contains("wan.data_flows"),
        "lmas run does not name wan.data_flows:\n{stderr}"
    );
}

#[test]
fn unknown_subcommand_fails() {
    let out = lmas(&["no-such-command"]);
    assert!(!out.status.success(), "lmas no-such-command exited 0");
}

/// Like OpenSSH's StrictModes: a config file or a peer public key file that someone else can
/// write could hand the tunnel to an impostor, and a key file owned by another user is not
/// ours to trust. `check-config` and `run` refuse each, saying what was found and the fix.
#[test]
fn files_others_can_write_or_own_are_refused() {
    let (dir, _tmp) = temp_dir("lmas-e2e-trust-");
    let (a, _) = valid_configs(&dir);
    let chmod =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();

    // The config file itself, group- or world-writable.
    for mode in [0o664, 0o646] {
        chmod(&a, mode);
        let (_, line) = expect_error(&a, &format!("config mode {mode:o}"));
        assert!(
            line.contains("writable") && line.contains("chmod go-w"),
            "config mode {mode:o}: {line}"
        );
    }
    chmod(&a, 0o644);
    assert!(check_config(&a).status.success(), "0644 config refused");

    // A peer public key file others can write.
    let b_pub = pub_path(&dir.join("gw-b.key"));
    let f = broken(&dir, "pubfile.toml", |t| {
        let line = t.lines().find(|l| l.starts_with("public_key =")).unwrap();
        t.replace(line, &format!("public_key_file = \"{}\"", b_pub.display()))
    });
    assert!(
        check_config(&f).status.success(),
        "public_key_file config refused"
    );
    chmod(&b_pub, 0o666);
    let (_, line) = expect_error(&f, "world-writable public key file");
    assert!(
        line.contains("peer.public_key_file") && line.contains(&b_pub.display().to_string()),
        "{line}"
    );
    chmod(&b_pub, 0o644);

    // A private key owned by another user (needs root to chown).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: files_others_can_write_or_own_are_refused: the ownership case needs root");
        return;
    }
    let key = dir.join("gw-a.key");
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let (_, line) = expect_error(&a, "private key owned by nobody");
    assert!(
        line.contains("gateway.private_key_file") && line.contains("owned by uid 65534"),
        "{line}"
    );
    let mut cmd = Command::new(lmas_bin());
    cmd.arg("run").arg("--config").arg(&a);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10)).expect("lmas run exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("owned by uid 65534"),
        "{stderr}"
    );
}
