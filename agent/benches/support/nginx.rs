//! nginx beside the agent in one bench run: the peer the agent's figures are read against. Serves `media` under
//! `/videos/` with `sendfile`, two workers and room for 30,000 connections; its files live in `dir`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Nginx {
    pub child: Child,
    pub port: u16,
}

/// Starts nginx on a free loopback port (`http2` adds HTTP/2 on the same port, as prior knowledge).
pub fn start(dir: &Path, media: &Path, http2: bool) -> Nginx {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root; worker_processes 2; daemon off; pid {d}/nginx.pid; error_log {d}/error.log crit;\n\
             worker_rlimit_nofile 30000; events {{ worker_connections 30000; }}\n\
             http {{ access_log off; sendfile on; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}{h2}; location /videos/ {{ alias {m}/; }} }} }}\n",
            d = dir.display(),
            m = media.display(),
            h2 = if http2 { " http2" } else { "" },
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-c", conf.to_str().unwrap(), "-e", dir.join("error.log").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is needed for the comparison: apt-get install nginx (bench/run.sh does)");
    Nginx { child, port }
}

/// Stops a server the bench started: SIGTERM first, so an nginx master takes its workers down with it (SIGKILL
/// would leave them running, orphaned), then SIGKILL if it is still there after 3 s.
pub fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling a child this process started and has not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
