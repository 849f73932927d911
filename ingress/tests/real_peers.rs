//! Real peers on the home side: nginx with `proxy_protocol` on reads the PROXY v2 header the
//! ingress sends and reports the client address it learnt. Needs nginx (scripts/test
//! installs it); fails, never skips, without it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nginx(listen: &str) -> Nginx {
    let dir = std::env::temp_dir().join(format!("ingress-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log; user root;\n\
         events {{ }}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
           uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen {listen} proxy_protocol;\n\
             location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port\\n\"; }} }} }}\n"
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&file)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx must be installed (scripts/test installs it)");
    Nginx { child, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sees_the_real_client_address_via_proxy_v2() {
    let port = test_support::free_port();
    let backend: std::net::SocketAddr = format!("127.0.0.6:{port}").parse().expect("addr");
    let _nginx = start_nginx(&backend.to_string());
    wait_until_async(|| async move { tokio::net::TcpStream::connect(backend).await.is_ok() }).await;
    let server = start(&config(&[("wan1", backend, 1)], None, "proxy_protocol = \"v2\"")).await;
    let addr = service_addr(&server, "echo").await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.9:0".parse().expect("addr")).expect("bind");
    let mut s = sock.connect(addr).await.expect("connect");
    let me = s.local_addr().expect("local");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp)).await.expect("in time").expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(&format!("client={}:{}", me.ip(), me.port())), "nginx saw: {resp}");
}

async fn wait_until_async<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
