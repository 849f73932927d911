# The TLS terminator setup bench/tls, bench/instructions and bench/idle-heap share, sourced by
# each. `bench_work` makes $work (a temporary directory) and `pids` (started processes), both
# cleaned up on exit; the rest expects them, $name and $port (the bench's name and TLS port),
# $threads and the array `addr` (candidate -> listening address).

# The temporary directory $work (readable by nginx's workers) and the list $pids of processes
# the bench starts, both taken away on exit.
bench_work() {
  work=$(mktemp -d)
  chmod 755 "$work"
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# The LAN service: one nginx worker, a fixed small answer, keep-alive without limit.
tls_upstream() {
  local u="$work/upstream"; mkdir -p "$u"
  cat > "$u/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $u/nginx.pid; error_log $u/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $u/b; proxy_temp_path $u/p; fastcgi_temp_path $u/f; uwsgi_temp_path $u/u; scgi_temp_path $u/s;
  server { listen 127.0.0.1:18091; location / { return 200 "hello from the upstream\n"; } }
}
EOF
  /usr/sbin/nginx -p "$u" -c "$u/nginx.conf" & pids+=($!)
}

# One certificate for every candidate: self-signed ECDSA P-256 for the bench name; sets $cert.
tls_cert() {
  cert="$work/live/$name"; mkdir -p "$cert"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name" -keyout "$cert/privkey.pem" -out "$cert/fullchain.pem" 2>/dev/null
  chmod 644 "$cert"/*.pem
}

# The local proxy's config for mesh address $1. Its plain HTTP listener is not measured: an
# ephemeral port (http_port = 0), so that nothing else listening on a fixed one stops the run.
# Idle timeouts are raised where the default is under a minute, so that no candidate closes
# an idle connection while the idle measurement counts them.
lp_config() {
  cat <<EOF
threads = $threads
[wan]
addresses = ["127.0.0.1"]
[mesh]
listen = "$1"
[http]
https_port = $port
http_port = 0
redirect_to_https = false
header_read_timeout = "60s"
[tls]
certbot_live_dir = "$work/live"
[[site]]
host = "$name"
upstream = "http://127.0.0.1:18091"
header_sets = []
EOF
}

# nginx as the TLS terminator in front of the LAN service; sets $n (its prefix directory).
nginx_tls_config() {
  n="$work/nginx"; mkdir -p "$n"
  cat > "$n/nginx.conf" <<EOF
daemon off; master_process $([ "$threads" = 1 ] && echo off || echo on); worker_processes $threads; pid $n/nginx.pid; error_log $n/error.log warn;
events { worker_connections 8000; }
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 75s; client_header_timeout 60s;
  client_body_temp_path $n/b; proxy_temp_path $n/p; fastcgi_temp_path $n/f; uwsgi_temp_path $n/u; scgi_temp_path $n/s;
  upstream lan { server 127.0.0.1:18091; keepalive 64; }
  server {
    listen ${addr[nginx]}:$port ssl http2;
    server_name $name;
    ssl_certificate $cert/fullchain.pem; ssl_certificate_key $cert/privkey.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://lan; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
}

# Waits for a listener on $1:$2, up to ${3:-100} tenths of a second.
wait_port() {
  for _ in $(seq "${3:-100}"); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing on $1:$2" >&2; return 1
}

# Whether h2load's output in file $1 counts every request answered with success ("requests: N
# total, M started, N done, N succeeded"; with -D, M runs ahead of N).
all_succeeded() {
  grep -Eq '^requests: ([0-9]+) total, [0-9]+ started, \1 done, \1 succeeded' "$1"
}
