//! Reef BFD against FRR's bfdd and against itself, over veth links between network namespaces.
//! Root only: run with `cargo nextest run -p reef-bfd --run-ignored all`.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reef_bfd::{Bfd, Diagnostic, SessionConfig, SessionKey, SessionStatus, State};
use reef_lab::{Netns, Process, require_root, run_ok, veth, wait_for};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};

/// Bound of every wait for a session to come Up (slow start runs at 1 s per packet).
const UP_TIMEOUT: Duration = Duration::from_secs(20);
/// Generous sanity bound on detection with 300 ms x 3 (0.9 s nominal): not a performance check.
const DETECTION_SANITY: Duration = Duration::from_secs(5);

/// Moves the calling thread (only it) into the namespace `name`.
fn enter_netns(name: &str) {
    let path = PathBuf::from("/run/netns").join(name);
    let file = File::open(&path).expect("namespace file of a namespace we created");
    // SAFETY: setns(2) on this thread only, with an open namespace file descriptor.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// A Reef BFD driver running on a thread that entered a namespace, with its own tokio runtime, so
/// its sockets live in that namespace. Dropping it stops the runtime and joins the thread.
struct NsBfd {
    bfd: Bfd,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsBfd {
    fn start(ns: &Netns) -> NsBfd {
        let name = ns.name().to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter_netns(&name);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let _ = ready_tx.send(Bfd::spawn());
                let _ = stopped.await;
            });
        });
        let bfd = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("driver thread answers")
            .expect("driver binds UDP 3784");
        NsBfd {
            bfd,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NsBfd {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// FRR's zebra and bfdd in a namespace with pathspace = namespace name; stopped by pid on drop,
/// then its /etc/frr and /var/run/frr directories are removed.
struct FrrBfd {
    bfdd: Process,
    zebra: Process,
    pathspace: String,
    dir: tempfile::TempDir,
}

impl FrrBfd {
    fn start(ns: &Netns, peer: IpAddr, interval_ms: u32) -> FrrBfd {
        let pathspace = ns.name().to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_dir = Path::new("/etc/frr").join(&pathspace);
        let run_dir = Path::new("/var/run/frr").join(&pathspace);
        std::fs::create_dir_all(&conf_dir).expect("conf dir");
        let conf = conf_dir.join("frr.conf");
        std::fs::write(conf_dir.join("vtysh.conf"), "").expect("vtysh.conf");
        std::fs::write(
            &conf,
            format!(
                "frr defaults traditional\nlog file {}\nbfd\n peer {peer}\n  receive-interval {interval_ms}\n  transmit-interval {interval_ms}\n exit\nexit\n",
                dir.path().join("frr.log").display()
            ),
        )
        .expect("frr.conf");
        for path in [&conf_dir, &dir.path().to_path_buf()] {
            run_ok(Command::new("chown").args(["-R", "frr:frr"]).arg(path)).expect("chown");
        }
        let conf = conf.to_string_lossy().into_owned();
        let zebra = ns
            .spawn(
                "zebra",
                "/usr/lib/frr/zebra",
                &["-N", &pathspace, "-f", &conf],
                &dir.path().join("zebra.out"),
            )
            .expect("zebra starts");
        wait_for(
            "zebra's zserv socket",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || run_dir.join("zserv.api").exists().then_some(()),
        )
        .expect("zebra up");
        let bfdctl = run_dir.join("bfdd.sock").to_string_lossy().into_owned();
        let bfdd = ns
            .spawn(
                "bfdd",
                "/usr/lib/frr/bfdd",
                &["-N", &pathspace, "-f", &conf, "--bfdctl", &bfdctl],
                &dir.path().join("bfdd.out"),
            )
            .expect("bfdd starts");
        let frr = FrrBfd {
            bfdd,
            zebra,
            pathspace,
            dir,
        };
        wait_for(
            "vtysh to reach bfdd",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || frr.peers(ns).ok(),
        )
        .expect("bfdd answers");
        frr
    }

    /// `show bfd peers json`.
    fn peers(&self, ns: &Netns) -> Result<Vec<Value>, String> {
        let out =
            run_ok(
                ns.command("vtysh")
                    .args(["-N", &self.pathspace, "-c", "show bfd peers json"]),
            )
            .map_err(|e| e.to_string())?;
        match serde_json::from_str(&out) {
            Ok(Value::Array(peers)) => Ok(peers),
            _ => Err(format!("not a JSON array: {out}")),
        }
    }

    /// FRR's view of the session with `peer`.
    fn peer(&self, ns: &Netns, peer: IpAddr) -> Option<Value> {
        self.peers(ns)
            .ok()?
            .into_iter()
            .find(|p| p.get("peer").and_then(Value::as_str) == Some(peer.to_string().as_str()))
    }

    fn status(&self, ns: &Netns, peer: IpAddr) -> Option<String> {
        self.peer(ns, peer)?
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn log(&self) -> String {
        ["frr.log", "bfdd.out", "zebra.out"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FrrBfd {
    fn drop(&mut self) {
        self.bfdd.stop();
        self.zebra.stop();
        let _ = std::fs::remove_dir_all(Path::new("/etc/frr").join(&self.pathspace));
        let _ = std::fs::remove_dir_all(Path::new("/var/run/frr").join(&self.pathspace));
    }
}

/// Drops all BFD traffic (UDP 3784 in and out) inside `ns` with nftables: the link stays up, the
/// packets vanish, as with a failed forwarding path.
fn cut_bfd(ns: &Netns) {
    let rules = "table inet reefcut {\n chain in { type filter hook input priority 0; policy accept; udp dport 3784 drop; }\n chain out { type filter hook output priority 0; policy accept; udp dport 3784 drop; }\n}\n";
    let script = std::env::temp_dir().join(format!("reef-bfd-cut-{}.nft", ns.name()));
    std::fs::write(&script, rules).expect("nft script");
    let result = ns.exec(&["nft", "-f", &script.to_string_lossy()]);
    let _ = std::fs::remove_file(&script);
    result.expect("nft applies");
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits (bounded) until the session's status satisfies `done`; returns that status.
fn wait_status(
    rt: &Runtime,
    status: &mut watch::Receiver<SessionStatus>,
    timeout: Duration,
    done: impl FnMut(&SessionStatus) -> bool,
) -> Option<SessionStatus> {
    rt.block_on(async {
        tokio::time::timeout(timeout, status.wait_for(done))
            .await
            .ok()?
            .ok()
            .map(|s| s.clone())
    })
}

/// (1) Reef and FRR bfdd come Up on both sides, each knowing the other's discriminator;
/// (2) BFD packets are dropped at FRR's side: both go Down, Reef with "Control Detection Time
/// Expired". Prints the detection times.
fn frr_interop(v6: bool) {
    require_root();
    let reef_ns = Netns::new("bfdr").expect("netns");
    let frr_ns = Netns::new("bfdf").expect("netns");
    let link = veth(&reef_ns, &frr_ns).expect("veth");
    let (local, peer): (IpAddr, IpAddr) = if v6 {
        (link.a.v6.into(), link.b.v6.into())
    } else {
        (link.a.v4.into(), link.b.v4.into())
    };
    let frr = FrrBfd::start(&frr_ns, local, 300);
    let reef = NsBfd::start(&reef_ns);
    let rt = runtime();
    let key = SessionKey { peer, local };
    let mut status = rt
        .block_on(reef.bfd.add_session(key, SessionConfig::default()))
        .expect("session added");

    let up = wait_status(&rt, &mut status, UP_TIMEOUT, |s| s.state == State::Up);
    let up = up.unwrap_or_else(|| panic!("Reef never Up: {:?}\n{}", *status.borrow(), frr.log()));
    let frr_peer = wait_for(
        "FRR's session up",
        UP_TIMEOUT,
        Duration::from_millis(100),
        || {
            frr.peer(&frr_ns, local)
                .filter(|p| p.get("status").and_then(Value::as_str) == Some("up"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", frr.peer(&frr_ns, local), frr.log()));
    assert_eq!(
        frr_peer.get("remote-id").and_then(Value::as_u64),
        Some(u64::from(up.local_discriminator)),
        "FRR learned our discriminator: {frr_peer}"
    );
    assert_eq!(
        frr_peer.get("id").and_then(Value::as_u64),
        Some(u64::from(up.remote_discriminator)),
        "we learned FRR's discriminator: {frr_peer}"
    );
    // Once the Poll out of slow start completed, both sides run at 300 ms x 3.
    let settled = wait_status(&rt, &mut status, UP_TIMEOUT, |s| {
        s.transmit_interval == Duration::from_millis(300)
            && s.detection_time == Some(Duration::from_millis(900))
    })
    .unwrap_or_else(|| panic!("timers never settled: {:?}", *status.borrow()));
    assert_eq!(settled.state, State::Up);

    cut_bfd(&frr_ns);
    let cut_at = Instant::now();
    let (reef_down, reef_elapsed, frr_down) = std::thread::scope(|scope| {
        let frr_poller = scope.spawn(|| {
            wait_for(
                "FRR's session down",
                Duration::from_secs(10),
                Duration::from_millis(10),
                || {
                    frr.status(&frr_ns, local)
                        .filter(|s| s != "up")
                        .map(|s| (s, cut_at.elapsed()))
                },
            )
        });
        let reef_down = wait_status(&rt, &mut status, Duration::from_secs(10), |s| {
            s.state != State::Up
        });
        let reef_elapsed = cut_at.elapsed();
        (
            reef_down,
            reef_elapsed,
            frr_poller.join().expect("FRR poller"),
        )
    });
    let reef_down = reef_down.expect("Reef's session goes down after the cut");
    assert_eq!(reef_down.state, State::Down);
    assert_eq!(reef_down.diag, Diagnostic::ControlDetectionTimeExpired);
    assert_eq!(reef_down.downs, 1);
    let (frr_state, frr_elapsed) = frr_down.expect("FRR's session goes down after the cut");
    let family = if v6 { "IPv6" } else { "IPv4" };
    println!(
        "BFD {family} 300 ms x 3, cut at FRR's side: Reef detected in {:.0} ms (Down, {}), FRR in {:.0} ms ({frr_state}, polled via vtysh)",
        reef_elapsed.as_secs_f64() * 1e3,
        reef_down.diag,
        frr_elapsed.as_secs_f64() * 1e3,
    );
    assert!(
        reef_elapsed < DETECTION_SANITY,
        "detection took {reef_elapsed:?}"
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn frr_ipv4_comes_up_and_detects_a_cut() {
    frr_interop(false);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn frr_ipv6_comes_up_and_detects_a_cut() {
    frr_interop(true);
}

/// (3) Reef <-> Reef at 50 ms x 3: Up, no flap for 3 s, then a cut is detected; removing a session
/// signals AdminDown to the peer.
#[test]
#[ignore = "needs root: network namespaces"]
fn reef_to_reef_fast_timers_stay_up() {
    require_root();
    let ns_a = Netns::new("bfda").expect("netns");
    let ns_b = Netns::new("bfdb").expect("netns");
    let link = veth(&ns_a, &ns_b).expect("veth");
    let a = NsBfd::start(&ns_a);
    let b = NsBfd::start(&ns_b);
    let rt = runtime();
    let fast = SessionConfig {
        min_tx: Duration::from_millis(50),
        min_rx: Duration::from_millis(50),
        multiplier: 3,
    };
    let key_a = SessionKey {
        peer: link.b.v4.into(),
        local: link.a.v4.into(),
    };
    let key_b = SessionKey {
        peer: link.a.v4.into(),
        local: link.b.v4.into(),
    };
    let mut status_a = rt.block_on(a.bfd.add_session(key_a, fast)).expect("add a");
    let mut status_b = rt.block_on(b.bfd.add_session(key_b, fast)).expect("add b");
    for status in [&mut status_a, &mut status_b] {
        let settled = wait_status(&rt, status, UP_TIMEOUT, |s| {
            s.state == State::Up && s.detection_time == Some(Duration::from_millis(150))
        });
        assert!(
            settled.is_some(),
            "not Up at 50 ms x 3: {:?}",
            *status.borrow()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    for status in [&status_a, &status_b] {
        let now = status.borrow().clone();
        assert_eq!((now.state, now.downs), (State::Up, 0), "flapped: {now:?}");
        assert_eq!(now.transmit_interval, Duration::from_millis(50));
    }

    cut_bfd(&ns_b);
    let cut_at = Instant::now();
    let down = wait_status(&rt, &mut status_a, Duration::from_secs(10), |s| {
        s.state != State::Up
    })
    .expect("a goes down after the cut");
    let elapsed = cut_at.elapsed();
    assert_eq!(
        (down.state, down.diag),
        (State::Down, Diagnostic::ControlDetectionTimeExpired)
    );
    println!(
        "BFD Reef<->Reef 50 ms x 3: cut detected in {:.0} ms",
        elapsed.as_secs_f64() * 1e3
    );
    assert!(elapsed < DETECTION_SANITY, "detection took {elapsed:?}");
}

/// Removing a session sends AdminDown: the peer goes Down with "Neighbor Signaled Session Down"
/// instead of waiting for its detection timer.
#[test]
#[ignore = "needs root: network namespaces"]
fn removed_session_signals_admin_down_to_the_peer() {
    require_root();
    let ns_a = Netns::new("bfdra").expect("netns");
    let ns_b = Netns::new("bfdrb").expect("netns");
    let link = veth(&ns_a, &ns_b).expect("veth");
    let a = NsBfd::start(&ns_a);
    let b = NsBfd::start(&ns_b);
    let rt = runtime();
    let key_a = SessionKey {
        peer: link.b.v6.into(),
        local: link.a.v6.into(),
    };
    let key_b = SessionKey {
        peer: link.a.v6.into(),
        local: link.b.v6.into(),
    };
    let config = SessionConfig::default();
    let mut status_a = rt
        .block_on(a.bfd.add_session(key_a, config))
        .expect("add a");
    let mut status_b = rt
        .block_on(b.bfd.add_session(key_b, config))
        .expect("add b");
    for status in [&mut status_a, &mut status_b] {
        assert!(wait_status(&rt, status, UP_TIMEOUT, |s| s.state == State::Up).is_some());
    }
    rt.block_on(a.bfd.remove_session(key_a)).expect("remove");
    assert!(matches!(
        rt.block_on(a.bfd.remove_session(key_a)),
        Err(reef_bfd::BfdError::NoSession(_))
    ));
    let down = wait_status(&rt, &mut status_b, Duration::from_secs(10), |s| {
        s.state != State::Up
    })
    .expect("b goes down");
    assert_eq!(
        (down.state, down.diag, down.remote_state),
        (
            State::Down,
            Diagnostic::NeighborSignaledSessionDown,
            State::AdminDown
        )
    );
}

/// RFC 5881 §5 on real sockets: a Down packet that arrives with TTL 64 is ignored (the session
/// neither moves to Init nor learns the sender's discriminator); the same packet with TTL 255 moves
/// it to Init.
#[test]
#[ignore = "needs root: network namespaces"]
fn gtsm_ignores_packets_with_ttl_below_255() {
    require_root();
    let ns_a = Netns::new("bfdta").expect("netns");
    let ns_b = Netns::new("bfdtb").expect("netns");
    let link = veth(&ns_a, &ns_b).expect("veth");
    let a = NsBfd::start(&ns_a);
    let rt = runtime();
    let key = SessionKey {
        peer: link.b.v4.into(),
        local: link.a.v4.into(),
    };
    let mut status = rt
        .block_on(a.bfd.add_session(key, SessionConfig::default()))
        .expect("add");
    let down = reef_bfd::ControlPacket {
        diag: Diagnostic::None,
        state: State::Down,
        flags: reef_bfd::packet::Flags::default(),
        detect_mult: 3,
        my_discriminator: 0x4242,
        your_discriminator: 0,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 300_000,
        required_min_echo_rx_us: 0,
        auth: None,
    };
    let bytes = reef_bfd::encode(&down).expect("encode");
    let target = std::net::SocketAddr::new(link.a.v4.into(), reef_bfd::CONTROL_PORT);
    let ns_b_name = ns_b.name().to_string();
    let send_with_ttl = |ttl: u32| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_netns(&ns_b_name);
                    let socket = std::net::UdpSocket::bind((link.b.v4, 49200)).expect("bind");
                    socket.set_ttl(ttl).expect("ttl");
                    for _ in 0..5 {
                        socket.send_to(&bytes, target).expect("send");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
                .join()
                .expect("sender thread");
        });
    };
    send_with_ttl(64);
    // The five packets went out over 250 ms; give the receiver the same again.
    std::thread::sleep(Duration::from_millis(250));
    let ignored = status.borrow().clone();
    assert_eq!(
        (ignored.state, ignored.remote_discriminator),
        (State::Down, 0),
        "a TTL 64 packet was accepted: {ignored:?}"
    );
    send_with_ttl(255);
    let init = wait_status(&rt, &mut status, Duration::from_secs(5), |s| {
        s.state == State::Init
    })
    .expect("the TTL 255 packet moves the session to Init");
    assert_eq!(init.remote_discriminator, 0x4242);
}
