# Sourced by the bench scripts: a scratch folder removed at exit, the servers started there stopped at exit, a wait
# for a port, and the one nginx configuration every comparison runs against.

# bench_setup NAME: a fresh folder in $work, and at exit every pid in $pids stopped and the folder removed (KEEP=1
# keeps it for a look afterwards).
bench_setup() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap 'stop_servers; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
}

stop_servers() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

fail() { echo "$(basename "$0" .sh): $*" >&2; exit 1; }

# wait_port PORT WHAT: up to 10 s for something to listen on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  fail "nothing listens on port $1 ($2)"
}

# nginx_conf FILE MEDIA LISTEN [WORKERS] [CONNECTIONS]: nginx serving MEDIA at /videos/ as a video origin would
# (sendfile, tcp_nopush, no access log, long keep-alive), its pid, logs and temp files beside FILE. Run it with
# `nginx -c FILE -g 'daemon off;'` so it stays a child the script can stop.
nginx_conf() {
  local dir
  dir=$(dirname "$1")
  mkdir -p "$dir"
  cat >"$1" <<CONF
worker_processes ${4:-auto};
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections ${5:-8192}; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  types { video/mp4 mp4; }
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server {
    listen $3;
    location /videos/ { alias $2/; }
  }
}
CONF
}
