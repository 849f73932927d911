//! Every metric name, in one place. Labels are bounded: `listener`, `site`, `stream`,
//! `result`, `direction` take values from the config or from fixed lists; never client IPs.

/// Connections accepted or refused, by `listener` and `result`
/// (`accepted`, `untrusted`, `bad_header`, `header_timeout`, `health_check`, `unhealthy`,
/// `mesh_limit`: closed at accept, `mesh.max_connections` mesh clients were connected).
pub const CONNECTIONS: &str = "local_proxy_connections_total";
/// Connections open now, by `listener`.
pub const CONNECTIONS_ACTIVE: &str = "local_proxy_connections_active";
/// Connections that found every `http.max_connections` slot taken and waited for one to end
/// (the ones behind them wait in the listen backlog), by `listener`.
pub const CONNECTION_LIMIT: &str = "local_proxy_connection_limit_reached_total";
/// `accept` errors (possibly EMFILE), by `listener`.
pub const ACCEPT_ERRORS: &str = "local_proxy_accept_errors_total";
/// TLS handshakes, by `listener` and `result`
/// (`ok`, `not_tls`, `no_sni`, `unknown_sni`, `timeout`, `failed`).
pub const TLS_HANDSHAKES: &str = "local_proxy_tls_handshakes_total";
/// HTTP connections that ended in a protocol error, by `listener` and `result`
/// (`head_too_large`, `head_timeout`, `malformed`, `idle_timeout`, `io`).
pub const HTTP_CONNECTION_ERRORS: &str = "local_proxy_http_connection_errors_total";
/// h2 streams reset because nothing woke them for `idle_timeout + upstream_timeout` + the
/// longest `forward_auth.timeout` (a client that grants no flow-control window), by `listener`.
pub const HTTP_STREAMS_STALLED: &str = "local_proxy_http_streams_stalled_total";
/// Times a kept-alive HTTP/1 connection quiet between requests released its HTTP server's
/// buffers (parked; it is served again when its client asks), by `listener`.
pub const HTTP_PARKED: &str = "local_proxy_http_connections_parked_total";
/// HTTP requests answered, by `site` (configured host or `unknown`) and `result`
/// (`1xx`..`5xx`, `redirect`, `blocked`, `healthz`, `acme`, `unknown_site`, `bad_path`, the
/// forward-auth results, and the middlewares': `closed` (a hostile client, never answered),
/// `refused`, `rate_limited`, `cors_preflight`; `client_closed`: the client left before its
/// response was ready).
pub const HTTP_REQUESTS: &str = "local_proxy_http_requests_total";
/// Time from request head to response head, seconds, by `site`.
pub const HTTP_REQUEST_DURATION: &str = "local_proxy_http_request_duration_seconds";
/// Forward auth checks, by `site`, `route` (empty: the site's own) and `result` (`allowed`,
/// `denied`: any non-2xx answer, passed to the client; `unavailable`: 503; `timeout`: 504).
pub const FORWARD_AUTH: &str = "local_proxy_forward_auth_total";
/// Time to the auth service's answer, seconds, by `site`.
pub const FORWARD_AUTH_DURATION: &str = "local_proxy_forward_auth_duration_seconds";
/// Upstream failures, by `site` and `result` (`refused`, `timeout`, `error`; `body_timeout`
/// and `body_error`: the response was cut short after its head was passed on;
/// `local_resources`: this process was out of descriptors or local ports for the connect, not
/// held against the upstream).
pub const UPSTREAM_ERRORS: &str = "local_proxy_upstream_errors_total";
/// Protocol upgrades (WebSocket) relayed, by `site` and `result` (`ok`, `failed`).
pub const UPGRADES: &str = "local_proxy_upgrades_total";
/// Stream connections, by `stream` and `result`
/// (`ok`, `connect_failed`, `connect_timeout`, `transparent_failed`, `no_upstream`,
/// `local_resources`: this process was out of descriptors, not held against the upstream); a
/// connection retried on another upstream counts once per attempt.
pub const STREAM_CONNECTIONS: &str = "local_proxy_stream_connections_total";
/// Connections and flows of transparent streams forwarded from our own address instead of the
/// client's, by `stream` and `reason` (`family`: the client and the service differ in IP family).
pub const STREAM_TRANSPARENT_FALLBACKS: &str = "local_proxy_stream_transparent_fallbacks_total";
/// TCP stream connections closed because the client's bytes began with a PROXY header on a
/// stream that sends none (the upstream would take it for ours), by `stream`.
pub const STREAM_PROXY_HEADERS: &str = "local_proxy_stream_proxy_headers_refused_total";
/// Bytes relayed by streams, by `stream` and `direction` (`in` = to upstream, `out` = to client).
pub const STREAM_BYTES: &str = "local_proxy_stream_bytes_total";
/// UDP flows open now, by `stream`.
pub const UDP_FLOWS_ACTIVE: &str = "local_proxy_udp_flows_active";
/// UDP flows that gave their slot to a new source at the stream's `max_flows`, by `stream`.
pub const UDP_FLOWS_EVICTED: &str = "local_proxy_udp_flows_evicted_total";
/// Transparent UDP flows that took over the socket of the same client conversation after the
/// ingress moved it to another WAN (`stream::flow_socket`), by `stream`.
pub const UDP_FLOWS_MOVED: &str = "local_proxy_udp_flows_moved_total";
/// UDP datagrams relayed, by `stream` and `direction`.
pub const UDP_DATAGRAMS: &str = "local_proxy_udp_datagrams_total";
/// UDP datagrams dropped, by `stream` and `result`
/// (`untrusted`, `bad_header`, `flow_limit`, `source_share`, `send_failed`, `transparent_failed`, `no_upstream`,
/// `stream_removed`: arrived between a reload that removed the stream and its socket closing).
pub const UDP_DROPPED: &str = "local_proxy_udp_dropped_total";
/// Certificates (names) currently served.
pub const CERTIFICATES_LOADED: &str = "local_proxy_certificates_loaded";
/// When each served certificate ends (Unix seconds), by `certificate` (its first name);
/// set at each scrape. The alert rules (monitoring/alerts.yml) warn 14 days ahead.
pub const CERTIFICATE_EXPIRY: &str = "local_proxy_certificate_expiry_timestamp_seconds";
/// Runtime control requests refused, by `reason` (`missing`, `wrong` token).
pub const ADMIN_UNAUTHORIZED: &str = "local_proxy_admin_unauthorized_total";
/// Admin connections closed at accept: 64 were open already.
pub const ADMIN_REFUSED: &str = "local_proxy_admin_connections_refused_total";
/// Runtime control changes applied, by `action` (`drain`, `undrain`, `weight`).
pub const ADMIN_CONTROL: &str = "local_proxy_admin_control_total";
/// Certificate loads, by `result` (`ok`, `failed`).
pub const CERTIFICATE_LOADS: &str = "local_proxy_certificate_loads_total";
/// Configuration reloads, by `result` (`ok`, `invalid`, `bind_failed`).
pub const CONFIG_RELOADS: &str = "local_proxy_config_reloads_total";
/// 1 when the proxy can serve (a certificate is loaded), else 0.
pub const HEALTHY: &str = "local_proxy_healthy";
/// Addresses currently known per ingress name, by `name` (a configured DNS name, or `static`).
pub const FIREWALL_ADDRESSES: &str = "local_proxy_firewall_addresses";
/// Unix time of the last answered lookup, by `name`.
pub const FIREWALL_LAST_REFRESH: &str = "local_proxy_firewall_last_refresh_timestamp_seconds";
/// Failed or timed-out lookups (the last known addresses were kept), by `name` and `record` (`A`, `AAAA`).
pub const FIREWALL_LOOKUP_FAILURES: &str = "local_proxy_firewall_lookup_failures_total";
/// 1 while the latest lookup failed, 0 once one is answered, by `name` and `record`: what
/// `LocalProxyFirewallDnsFailing` watches (a failure count cannot tell a name failing now,
/// between backed-off lookups, from one that failed once an hour ago).
pub const FIREWALL_LOOKUP_FAILING: &str = "local_proxy_firewall_lookup_failing";
/// nftables table updates, by `result` (`ok`, `failed`).
pub const FIREWALL_UPDATES: &str = "local_proxy_firewall_updates_total";
/// Times the firewall table was found gone from the kernel (or changed) by the periodic
/// read-back, and installed again.
pub const FIREWALL_RESTORED: &str = "local_proxy_firewall_restored_total";
/// Addresses in the applied allowlist.
pub const FIREWALL_ALLOWED: &str = "local_proxy_firewall_allowed_addresses";
/// 1 while the table is open (no DNS answer yet and `on_no_answer = "open"`), else 0.
pub const FIREWALL_OPEN: &str = "local_proxy_firewall_open";
/// Per upstream of a site or stream (labels `site` or `stream`, and `upstream`: the configured
/// URL or address): 1 while up, else 0.
pub const UPSTREAM_UP: &str = "local_proxy_upstream_up";
/// Requests (sites), connections and flows (streams) sent to an upstream, retries included.
pub const UPSTREAM_REQUESTS: &str = "local_proxy_upstream_requests_total";
/// Failures of an upstream, by `result` (`connect`, `timeout`, `error`, `5xx`, `probe`,
/// `body_timeout`, `body_error`).
pub const UPSTREAM_FAILURES: &str = "local_proxy_upstream_failures_total";
/// Requests and connections that an upstream got as a retry after another one failed.
pub const UPSTREAM_RETRIES: &str = "local_proxy_upstream_retries_total";
/// Access log lines written, by `log` (the file's configured path).
pub const ACCESS_LOG_LINES: &str = "local_proxy_access_log_lines_total";
/// Access log lines dropped (the writer's queue was full: a slow disk; or the write failed),
/// by `log`.
pub const ACCESS_LOG_DROPPED: &str = "local_proxy_access_log_dropped_total";
/// Seconds to the response head (sites) or to the connect (streams), per upstream.
pub const UPSTREAM_LATENCY: &str = "local_proxy_upstream_latency_seconds";
/// Requests in flight, connections, flows and upgraded connections per upstream.
pub const UPSTREAM_ACTIVE: &str = "local_proxy_upstream_active";
/// Requests answered 503 and connections closed because no upstream was usable, by `site`
/// or `stream`.
pub const UPSTREAM_UNAVAILABLE: &str = "local_proxy_upstream_unavailable_total";
/// Days until each ACME certificate expires, by `certificate` (its `live/` folder: from the
/// config's names, so bounded).
pub const ACME_DAYS_LEFT: &str = "local_proxy_acme_certificate_days_left";
/// ACME issuance attempts, by `certificate` and `result`
/// (`ok`, `refused`, `rate_limited`, `challenge_failed`, `timeout`, `transport`, `storage`, `local`,
/// `bad_certificate`: the CA's certificate lacks an ordered name or does not parse).
pub const ACME_ORDERS: &str = "local_proxy_acme_orders_total";
/// Failed ACME attempts since the last success, by `certificate` (0 when healthy).
pub const ACME_FAILURES: &str = "local_proxy_acme_consecutive_failures";
/// Failures to create or restore the ACME account.
pub const ACME_ACCOUNT_ERRORS: &str = "local_proxy_acme_account_errors_total";
/// ACME challenges answered by our listeners, by `challenge` (`http-01`, `tls-alpn-01`).
pub const ACME_CHALLENGES: &str = "local_proxy_acme_challenges_answered_total";
/// Requests refused with 429 by a site's or route's `rate_limit`, by `site` and `route` (empty: the
/// site's own).
pub const RATE_LIMITED: &str = "local_proxy_rate_limited_total";
/// Clients a site's or route's rate limiter remembers now (at most its `max_clients`), by
/// `site` and `route` (empty: the site's own).
pub const RATE_LIMIT_CLIENTS: &str = "local_proxy_rate_limit_clients";
/// Clients a full rate limiter forgot to make room for a new one (each would start again
/// with a full burst), by `site` and `route`: more distinct addresses than `max_clients`.
pub const RATE_LIMIT_EVICTED: &str = "local_proxy_rate_limit_evictions_total";
/// Responses compressed, by `site` and `encoding` (`gzip`, `zstd`, `br`).
pub const HTTP_COMPRESSED: &str = "local_proxy_http_compressed_total";
/// CORS decisions, by `site` and `result` (`preflight`: answered with the policy;
/// `preflight_denied`: answered without CORS headers, the origin is not allowed; `denied`: a
/// request from an origin that is not allowed, sent on without CORS headers).
pub const CORS: &str = "local_proxy_cors_total";
/// Hostile-client rules that matched, by `site` and `rule` (`user_agent`: closed without a
/// response; `header`: answered 403).
pub const HOSTILE: &str = "local_proxy_hostile_total";
