//! The `reef` / `reef-ipam` CNI plugin binary, and `reef-cni install`.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use reef_cni::config::{Command, Invocation, NetConf, peek_version};
use reef_cni::plugin::{self, Mode};
use reef_cni::spec::{CURRENT_VERSION, CniError, ErrorCode};

/// The longest a single command may take; runtimes give up on their own after a few minutes.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest network configuration accepted on stdin.
const MAX_STDIN: u64 = 1 << 20;

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::env::args().nth(1).as_deref() == Some("install") {
        return reef_cni::install::main(std::env::args().skip(1));
    }
    let mode = if argv0.ends_with("reef-ipam") {
        Mode::Ipam
    } else {
        Mode::Main
    };
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    let version = peek_version(&stdin).unwrap_or_else(|| CURRENT_VERSION.to_string());
    let outcome = read
        .map_err(|e| CniError::new(ErrorCode::Io, format!("reading stdin: {e}")))
        .and_then(|_| execute(mode, &stdin));
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(stdout, "{json}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code.number(), error = %e, "command failed");
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn execute(mode: Mode, stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let invocation = Invocation::from_env(|k| std::env::var(k).ok())?;
    if invocation.command == Command::Version {
        return Ok(Some(reef_cni::spec::version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    init_logging(&conf);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(ErrorCode::Io, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        tokio::time::timeout(COMMAND_TIMEOUT, plugin::run(mode, &invocation, &conf))
            .await
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    format!(
                        "{:?} did not finish within {COMMAND_TIMEOUT:?}",
                        invocation.command
                    ),
                ))
            })
    })
}

/// Logs go to `logFile` (appended) or stderr, never stdout (stdout carries the result).
fn init_logging(conf: &NetConf) {
    let level = conf.log_level.as_deref().unwrap_or("info");
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let file = conf.log_file.as_ref().and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    let _ = match file {
        Some(file) => builder.with_writer(std::sync::Mutex::new(file)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
