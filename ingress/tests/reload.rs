//! A reload whose new listeners cannot all be bound is refused whole: the running config,
//! its listeners and its connections stay as they were (in-process, real sockets).

mod common;

use std::time::Duration;

use common::*;

/// A plain config on fixed ports: `tcp` serves `echo` over `wan1`, `udp` (if any) a UDP service.
fn conf(wan1: std::net::SocketAddr, tcp: u16, udp: Option<u16>) -> String {
    let udp = udp
        .map(|p| {
            format!("[[service]]\nname = \"dns-ish\"\nlisten = [\"127.0.0.1:{p}\"]\nprotocol = \"udp\"\npool = \"r\"\n")
        })
        .unwrap_or_default();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[pool.r]\npaths = [{{ name = \"wan1\", address = \"{wan1}\" }}]\n\
         health = {{ interval = \"100ms\", timeout = \"100ms\" }}\n\
         [[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{tcp}\"]\npool = \"r\"\n{udp}"
    )
}

/// The inode of the socket listening on 0.0.0.0:`port` (/proc/net/tcp): another one is a
/// socket closed and bound anew.
fn listening_inode(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("00000000:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbindable_listener_refuses_the_whole_reload() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let port = free_port();
    let server = start(&conf(wan1.addr, port, None)).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until("listener bound", Duration::from_secs(5), || !server.local_addrs("echo").is_empty()).await;
    assert_eq!(request(addr).await.expect("served"), "wan1");
    let before = server.shared().runtime().config.clone();

    // Someone else holds a TCP port and a UDP port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squat tcp");
    let taken = squatter.local_addr().expect("addr").port();
    let udp_squatter = std::net::UdpSocket::bind("127.0.0.1:0").expect("squat udp");
    let udp_taken = udp_squatter.local_addr().expect("addr").port();

    // 1. Moving the service to the taken port: refused, the old port keeps serving.
    let moved = ingress::Config::from_toml(&conf(wan1.addr, taken, None)).expect("valid");
    let e = server.try_reload(moved).await.expect_err("the port is taken");
    assert_eq!(e.addr.port(), taken, "the error names the address: {e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{taken}")) && e.to_string().contains("echo"), "{e}");
    assert_eq!(server.shared().runtime().config, before, "the running config stays");
    assert_eq!(request(addr).await.expect("still served on the old port"), "wan1");

    // 2. Adding a UDP service on a taken port: refused as a whole, nothing half-applied.
    let added = ingress::Config::from_toml(&conf(wan1.addr, port, Some(udp_taken))).expect("valid");
    let e = server.try_reload(added).await.expect_err("the udp port is taken");
    assert_eq!(e.service, "dns-ish");
    assert!(server.local_addrs("dns-ish").is_empty());
    assert_eq!(server.shared().runtime().config, before);

    // 3. Through `reload` (what SIGHUP calls): refused and counted.
    server.reload(ingress::Config::from_toml(&conf(wan1.addr, taken, None)).expect("valid")).await;
    let m = metrics(&server).await;
    assert!(metric(&m, "ingress_config_reloads_total", &[("result", "refused")]) >= 1.0);
    assert_eq!(request(addr).await.expect("still served"), "wan1");

    // 4. Once the port is free, the same reload applies: the service moves.
    drop(squatter);
    server
        .try_reload(ingress::Config::from_toml(&conf(wan1.addr, taken, None)).expect("valid"))
        .await
        .expect("applies");
    let new: std::net::SocketAddr = format!("127.0.0.1:{taken}").parse().expect("addr");
    assert_eq!(request(new).await.expect("served on the new port"), "wan1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the old port is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(udp_squatter);
}

/// A UDP listener moved between an address and the wildcard on one port is refused by a
/// reload (its flows still answer through the old socket), saying why and what to do; the old
/// listener keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_listener_moving_to_the_wildcard_is_refused_saying_why() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let (tcp, udp) = (free_port(), free_port());
    let server = start(&conf(wan1.addr, tcp, Some(udp))).await;
    wait_until("udp bound", Duration::from_secs(5), || !server.local_addrs("dns-ish").is_empty()).await;
    let before = server.shared().runtime().config.clone();
    let wildcard =
        conf(wan1.addr, tcp, Some(udp)).replace(&format!("\"127.0.0.1:{udp}\""), &format!("\"0.0.0.0:{udp}\""));
    let e = server.try_reload(ingress::Config::from_toml(&wildcard).expect("valid")).await.expect_err("refused");
    let text = e.to_string();
    assert!(e.service == "dns-ish" && text.contains(&format!("127.0.0.1:{udp}")) && text.contains("restart"), "{text}");
    assert_eq!(server.shared().runtime().config, before);
    assert_eq!(
        server.local_addrs("dns-ish"),
        [format!("127.0.0.1:{udp}").parse::<std::net::SocketAddr>().expect("addr")]
    );
}

/// A reload may move a TCP listener and the admin listener to the wildcard address on their
/// own ports, and give the admin's port to a service: the sockets in the way close first, and
/// serve again if the reload is refused (both binds failed with "Address in use" before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_to_the_wildcard_on_their_own_ports() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let (port, admin_port) = (free_port(), free_port());
    let on = |ip: &str, admin_ip: &str, extra: &str| {
        let text = conf(wan1.addr, port, None)
            .replace("listen = [\"127.0.0.1:", &format!("listen = [\"{ip}:"))
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin_ip}:{admin_port}\""));
        ingress::Config::from_toml(&format!("{text}{extra}")).expect("valid")
    };
    let first = conf(wan1.addr, port, None);
    let server =
        start(&first.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin_port}\""))).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until("listener bound", Duration::from_secs(5), || !server.local_addrs("echo").is_empty()).await;
    let admin = |ip: [u8; 4]| Some(std::net::SocketAddr::from((ip, admin_port)));

    // 1. Both to 0.0.0.0 on the same ports.
    server.try_reload(on("0.0.0.0", "0.0.0.0", "")).await.expect("applies");
    let wildcard: std::net::SocketAddr = format!("0.0.0.0:{port}").parse().expect("addr");
    wait_until("served on 0.0.0.0", Duration::from_secs(5), || server.local_addrs("echo") == [wildcard]).await;
    assert_eq!(request(addr).await.expect("served on the wildcard"), "wan1");
    assert_eq!(server.admin_addr(), admin([0, 0, 0, 0]));
    assert!(metrics(&server).await.contains("ingress_config_reloads_total"));

    // 2. Back, in a reload refused for a UDP port someone holds: the wildcard ones serve again.
    let udp_squatter = std::net::UdpSocket::bind("127.0.0.1:0").expect("squat udp");
    let udp_taken = udp_squatter.local_addr().expect("addr").port();
    let udp = format!(
        "[[service]]\nname = \"dns-ish\"\nlisten = [\"127.0.0.1:{udp_taken}\"]\nprotocol = \"udp\"\npool = \"r\"\n"
    );
    // Refused before anything was closed: the UDP bind needs no port a closing socket holds.
    let before = listening_inode(port);
    server.try_reload(on("127.0.0.1", "127.0.0.1", &udp)).await.expect_err("the udp port is taken");
    assert_eq!(server.admin_addr(), admin([0, 0, 0, 0]));
    assert_eq!(server.local_addrs("echo"), [wildcard]);
    assert_eq!(listening_inode(port), before, "the wildcard listener was closed and bound anew");
    // Nor for an admin address this host does not have (on another port: one of its own).
    let elsewhere = conf(wan1.addr, port, None)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"192.0.2.1:{}\"", free_port()));
    let elsewhere = ingress::Config::from_toml(&elsewhere).expect("valid");
    server.try_reload(elsewhere).await.expect_err("not this host's address");
    assert_eq!(listening_inode(port), before, "closed for an admin listener that could not bind");
    assert_eq!(server.admin_addr(), admin([0, 0, 0, 0]));
    assert!(metrics(&server).await.contains("ingress_config_reloads_total"));
    assert_eq!(request(addr).await.expect("served on the wildcard still"), "wan1");

    // 3. The admin listener moves away, and a service takes its port in the same reload.
    let takes_admin_port =
        format!("[[service]]\nname = \"second\"\nlisten = [\"127.0.0.1:{admin_port}\"]\npool = \"r\"\n");
    let text = conf(wan1.addr, port, None).replace("listen = [\"127.0.0.1:", "listen = [\"0.0.0.0:");
    server
        .try_reload(ingress::Config::from_toml(&format!("{text}{takes_admin_port}")).expect("valid"))
        .await
        .expect("applies");
    let taken: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    assert_eq!(request(taken).await.expect("the service on the admin's old port"), "wan1");
    assert!(server.admin_addr().is_some_and(|a| a.port() != admin_port));
    assert!(metrics(&server).await.contains("ingress_config_reloads_total"));
    drop(udp_squatter);
}

/// An admin port busy at start-up is not served, and does not refuse later reloads that keep
/// it: each tries it again, and once it is free the listener serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_busy_at_start_refuses_no_reload() {
    let wan1 = Backend::start("wan1", "127.0.0.2").await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squat");
    let busy = squatter.local_addr().expect("addr");
    let port = free_port();
    let with_admin =
        |tcp: u16| conf(wan1.addr, tcp, None).replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{busy}\""));
    let server = start(&with_admin(port)).await;
    assert_eq!(server.admin_addr(), None);
    let moved = free_port();
    server.try_reload(ingress::Config::from_toml(&with_admin(moved)).expect("valid")).await.expect("applies");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{moved}").parse().expect("addr");
    wait_until("the service moved", Duration::from_secs(5), || !server.local_addrs("echo").is_empty()).await;
    assert_eq!(request(addr).await.expect("served on the new port"), "wan1");
    assert_eq!(server.admin_addr(), None);
    drop(squatter);
    server.try_reload(ingress::Config::from_toml(&with_admin(moved)).expect("valid")).await.expect("applies");
    assert_eq!(server.admin_addr(), Some(busy));
    assert!(metrics(&server).await.contains("ingress_config_reloads_total"));
}

/// `/metrics` shows only what runs: a path a reload removed leaves no gauge (its last `up`
/// would stand for ever) while its counters stay as history, and the pool, path and service
/// of a reload refused for a taken port (built before the bind failed) leave no gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_leave_out_the_gauges_of_what_does_not_run() {
    let (wan1, wan2) = (Backend::start("wan1", "127.0.0.2").await, Backend::start("wan2", "127.0.0.3").await);
    let port = free_port();
    let two = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[pool.r]\npaths = [{{ name = \"wan1\", address = \"{}\" }}, \
         {{ name = \"wan2\", address = \"{}\" }}]\n[[service]]\nname = \"echo\"\nlisten = [\"127.0.0.1:{port}\"]\npool = \"r\"\n",
        wan1.addr, wan2.addr
    );
    let server = start(&two).await;
    let present = |m: &str, name: &str, labels: &[(&str, &str)]| {
        m.lines().any(|l| {
            l.starts_with(&format!("{name}{{")) && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
    };
    let wan2_path = [("pool", "r"), ("path", "wan2")];
    let m = metrics(&server).await;
    assert!(present(&m, "ingress_path_up", &wan2_path), "wan2 has its gauges while it runs:\n{m}");
    assert!(present(&m, "ingress_path_connects_total", &wan2_path));

    server.try_reload(ingress::Config::from_toml(&conf(wan1.addr, port, None)).expect("valid")).await.expect("applies");
    let m = metrics(&server).await;
    for gauge in ["ingress_path_up", "ingress_path_health_factor", "ingress_path_active_connections"] {
        assert!(!present(&m, gauge, &wan2_path), "{gauge} of the removed path:\n{m}");
    }
    assert!(present(&m, "ingress_path_connects_total", &wan2_path), "its counters stay:\n{m}");
    assert_eq!(metric(&m, "ingress_path_up", &[("pool", "r"), ("path", "wan1")]), 1.0);

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squat tcp");
    let taken = squatter.local_addr().expect("addr").port();
    let refused = format!(
        "{}[pool.s]\npaths = [{{ name = \"wan3\", address = \"{}\" }}]\n\
         [[service]]\nname = \"added\"\nlisten = [\"127.0.0.1:{taken}\"]\npool = \"s\"\n",
        conf(wan1.addr, port, None),
        wan2.addr
    );
    server.try_reload(ingress::Config::from_toml(&refused).expect("valid")).await.expect_err("the port is taken");
    let m = metrics(&server).await;
    assert!(!present(&m, "ingress_path_up", &[("pool", "s"), ("path", "wan3")]), "{m}");
    assert!(!present(&m, "ingress_pool_on_mesh", &[("pool", "s")]), "{m}");
    assert!(!present(&m, "ingress_service_active_connections", &[("service", "added")]), "{m}");
    assert!(present(&m, "ingress_service_active_connections", &[("service", "echo")]), "what runs stays:\n{m}");
}
