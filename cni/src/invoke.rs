//! The runtime's side of the protocol: how a container runtime calls a plugin (environment + stdin,
//! result on stdout). Used by the tests, the benchmark and the lab, which start pods as a runtime does.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One call of a plugin.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The plugin's file name in `plugin_dir` (`reef`, `reef-ipam`, `ptp`, ...).
    pub plugin: &'a str,
    /// `ADD`, `DEL`, `CHECK`, `VERSION`, `GC`, `STATUS`.
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a str>,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
    pub config: &'a Value,
}

/// What the plugin answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    /// stdout as JSON (`Value::Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }
}

impl Call<'_> {
    /// Runs the plugin from `plugin_dir` (also its `CNI_PATH`), inside the named network namespace
    /// (`ip netns exec`) when `in_netns` is given, killed after `timeout`.
    pub fn run(
        &self,
        plugin_dir: &Path,
        in_netns: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<Answer> {
        let program = plugin_dir.join(self.plugin);
        let mut cmd = match in_netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", plugin_dir)
            .env("CNI_ARGS", self.args);
        if let Some(netns) = self.netns {
            cmd.env("CNI_NETNS", netns);
        }
        run_with_stdin(cmd, self.config.to_string().as_bytes(), timeout)
    }
}

/// Runs `cmd` with `stdin`, killed after `timeout`.
pub fn run_with_stdin(
    mut cmd: Command,
    stdin: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // A plugin that exits before reading all of stdin is not an error of ours.
        let _ = input.write_all(stdin);
    }
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(output) => output?,
        Err(_) => {
            // SAFETY: kill(2) on our own child, not yet reaped (the waiter thread still holds it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("plugin did not finish within {timeout:?}"),
            ));
        }
    };
    Ok(Answer {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
