/* SPDX-License-Identifier: MIT */
/*
 * rebound: an echo engine for Linux. Public API.
 *
 * Conventions: functions that can fail return >= 0 on success and -errno on
 * failure; *_destroy(NULL) is a no-op. Only libc/POSIX headers are included.
 */
#ifndef REBOUND_REBOUND_H
#define REBOUND_REBOUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RB_VERSION "0.1.0"

/* Most --listen URLs one server accepts. */
#define RB_MAX_LISTEN 16
/* Most worker threads. */
#define RB_MAX_THREADS 64

enum rb_engine {
	RB_ENGINE_AUTO = 0,
	RB_ENGINE_EPOLL,
	RB_ENGINE_POLL,
	RB_ENGINE_SELECT,
	RB_ENGINE_URING,
	RB_ENGINE_SOCKMAP,
};

enum rb_copy {
	RB_COPY_WRITEV = 0,
	RB_COPY_SPLICE,
};

/* What a connection gets (--service): its bytes back, nothing, or a stream. */
enum rb_service {
	RB_SERVICE_ECHO = 0, /* every byte back (RFC 862) */
	RB_SERVICE_DISCARD,  /* every byte read and dropped (RFC 863) */
	RB_SERVICE_CHARGEN,  /* the rotating character lines, as fast as read (RFC 864) */
	RB_SERVICE_SOCKPERF, /* answers sockperf clients' pong requests */
};

enum rb_trigger {
	RB_TRIGGER_EDGE = 0,
	RB_TRIGGER_LEVEL,
};

/* Log levels, numbered as the syslog(3) priorities they become in the journal. */
enum rb_log_level {
	RB_LOG_ERR = 3,
	RB_LOG_WARNING = 4,
	RB_LOG_NOTICE = 5,
	RB_LOG_INFO = 6,
	RB_LOG_DEBUG = 7,
};

/*
 * A log sink: one message, without a trailing newline or a "rebound: "
 * prefix. Called in the thread that logs (any worker thread, or the thread
 * calling rb_server_create/rb_server_run), so it must be thread-safe; it runs
 * inside the event loop, so it should be quick.
 */
typedef void rb_log_fn(void *ctx, enum rb_log_level level, const char *msg);

/* io_uring features that can be switched off (rb_config.uring_off). */
enum {
	RB_URING_BUNDLE = 1u << 0,  /* receive bundles (Linux 6.10) */
	RB_URING_INC = 1u << 1,     /* incremental buffer consumption (6.12) */
	RB_URING_BATCH = 1u << 2,   /* one enter per wake-up: min-wait batching (6.12) */
	RB_URING_SEND_ZC = 1u << 3, /* zero-copy sends (6.0; on with rb_config.uring_send_zc) */
};

/*
 * Impairments (issue 13; docs/impairments.md): a test-bed echo that
 * misbehaves on purpose. Probabilities are in millionths (RB_PROB_ONE is
 * certainty); an impairment whose probability is 0 is not configured. Every
 * random choice comes from a generator per session (per UDP socket for
 * datagrams) seeded from `seed` and the session's number, so a run can be
 * replayed.
 */
#define RB_PROB_ONE 1000000u

/* What one flow's bytes suffer. A relay has two flows (up: client to
 * upstream; down: upstream to client); an echo's one flow takes `down`.
 * Each *_p is the share of sessions the impairment applies to. */
struct rb_impair_flow {
	unsigned delay_ms, jitter_ms, delay_p; /* every byte released this long after it came */
	uint64_t rate_bps;                     /* a token bucket, bits/s */
	unsigned rate_p;
	unsigned slice_size, slice_ms, slice_p; /* writes of at most slice_size, slice_ms apart */
	uint64_t reset_after;                   /* after this many bytes out: RST */
	unsigned reset_p;
	uint64_t close_after; /* ... FIN, the rest dropped */
	unsigned close_p;
	uint64_t stall_after; /* ... nothing more, either way */
	unsigned stall_p;
};

struct rb_impair {
	struct rb_impair_flow up, down;
	unsigned accept_delay_ms, accept_delay_p; /* a new session waits this long */
	unsigned refuse_p;                        /* a new session is reset at once */
	/* UDP, per datagram (a datagram's delay is down's). */
	unsigned loss_p, duplicate_p, corrupt_p;
	uint64_t seed;
	bool seed_set; /* else the server picks one and says which */
};

struct rb_config {
	/* Listen URLs: tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT, unix:PATH,
	 * fd:N (an open listening or datagram socket, e.g. from systemd). */
	const char *listen[RB_MAX_LISTEN];
	size_t n_listen;
	enum rb_engine engine;
	enum rb_copy copy;
	enum rb_trigger trigger;
	unsigned threads;             /* worker threads, >= 1 */
	size_t chunk_size;            /* bytes per pool chunk */
	size_t conn_buffer;           /* per-connection cap on buffered bytes */
	size_t max_memory;            /* cap on all buffered bytes, 0 = none */
	size_t pipe_size;             /* splice pipe size (capped by fs.pipe-max-size) */
	unsigned pool_cache;          /* idle chunks kept per worker */
	size_t read_budget;           /* bytes read per connection per wakeup */
	unsigned accept_budget;       /* accepts per listener per wakeup */
	unsigned shutdown_timeout_ms; /* graceful flush deadline */
	unsigned uring_entries;       /* uring: submission queue entries per ring */
	unsigned uring_buffers;       /* uring: provided buffers per worker (power of two) */
	unsigned uring_sqpoll_ms;     /* uring: SQPOLL thread idle time, 0 = no SQPOLL */
	unsigned uring_off;      /* uring: RB_URING_* features not to use, 0 = all the kernel has */
	unsigned uring_batch_us; /* uring: min-wait batching window in us, 0 = no batching */
	size_t uring_send_zc;    /* uring: zero-copy sends of at least this many bytes, 0 = off */
	int backlog;
	unsigned unix_mode;         /* mode of unix:PATH socket files (default 0660) */
	unsigned udp_rate;          /* UDP datagrams/s answered per source address, 0 = no limit */
	bool udp_low_ports;         /* answer UDP sources below port 1024 (off: reflection) */
	unsigned keepalive_idle_s;  /* TCP keepalive: idle seconds before probes, 0 = off */
	unsigned keepalive_intvl_s; /* ... seconds between probes */
	unsigned keepalive_cnt;     /* ... unanswered probes before the peer is dead */
	unsigned user_timeout_ms;   /* TCP_USER_TIMEOUT for unacknowledged data, 0 = kernel's */
	enum rb_service service;    /* what connections get (default echo) */
	/* Relay: every accepted peer gets its own connection to this upstream
	 * (tcp://HOST:PORT, tcp://[V6]:PORT, unix:PATH), bytes both ways; NULL:
	 * no relay. */
	const char *forward;
	unsigned connect_timeout_ms; /* relay: upstream connect deadline (default 5000) */
	/* Logging: messages up to log_level (RB_LOG_INFO by default; below
	 * RB_LOG_ERR logs nothing) go to log_fn, or without one to stderr (see
	 * rb_log). The library's own messages use the settings of the server
	 * whose thread logs them. */
	enum rb_log_level log_level;
	rb_log_fn *log_fn;   /* NULL: the stderr logger */
	void *log_ctx;       /* passed to log_fn */
	bool log_timestamps; /* stderr logger: ISO 8601 UTC timestamps */
	bool log_json;       /* stderr logger: one JSON object per line */
	/* The test bed (issue 12). */
	unsigned max_conns;         /* open sessions at most, 0 = no limit; beyond: refused */
	unsigned idle_timeout_ms;   /* close a session idle this long (FIN), 0 = never */
	unsigned write_timeout_ms;  /* reset a session whose output is stuck this long, 0 = never */
	bool log_connections;       /* a line at every session's open and close */
	unsigned stats_interval_ms; /* a stats line this often, 0 = never */
	bool reuseport;             /* TCP: one listening socket per worker (SO_REUSEPORT) */
	int cpus[RB_MAX_THREADS];   /* worker i runs on CPU cpus[i] ... */
	unsigned n_cpus;            /* ... for i < n_cpus (0: not pinned) */
	unsigned busy_poll_us;      /* SO_BUSY_POLL on accepted sockets (and epoll's), 0 = off */
	struct rb_impair impair;    /* impairments (issue 13): none by default */
};

/*
 * Counters: the one list. X(name, how, doc): how is SUM (added over
 * workers) or MAX (the largest of the workers'). It makes the struct, the
 * summing in rb_server_stats() and the JSON of rb_stats_json().
 */
#define RB_STATS(X)                                                                                \
	X(accepted, SUM, "connections accepted")                                                   \
	X(active, SUM, "connections open now")                                                     \
	X(closed, SUM, "connections closed")                                                       \
	X(refused, SUM, "accepted then closed at once (EMFILE, limits)")                           \
	X(resets, SUM, "connections ended by an error (RST, EPIPE)")                               \
	X(bytes_in, SUM, "payload bytes read")                                                     \
	X(bytes_out, SUM, "payload bytes written")                                                 \
	X(read_calls, SUM, "readv/read/recv syscalls")                                             \
	X(write_calls, SUM, "writev/write/send syscalls")                                          \
	X(wakeups, SUM, "poller waits that returned")                                              \
	X(requeues, SUM, "ready-list requeues (budget exhausted)")                                 \
	X(pauses, SUM, "backpressure pauses (cap reached)")                                        \
	X(memory_waits, SUM, "reads deferred by the worker memory cap")                            \
	X(buffered, SUM, "bytes buffered now")                                                     \
	X(peak_buffered, SUM, "most bytes buffered at once, all conns")                            \
	X(peak_conn_buffered, MAX, "most bytes one connection buffered")                           \
	X(chunks_allocated, SUM, "chunks obtained from malloc")                                    \
	X(chunks_live, SUM, "chunks that exist now (held or cached)")                              \
	X(chunks_cached, SUM, "idle chunks in the pools now")                                      \
	X(bytes_spliced, SUM, "payload bytes moved socket -> pipe -> socket")                      \
	X(splice_calls, SUM, "splice syscalls")                                                    \
	X(pipe_cache_hits, SUM, "pipes reused from the cache")                                     \
	X(splice_fallbacks, SUM, "splice connections that fell back to writev")                    \
	X(datagrams_in, SUM, "UDP datagrams received")                                             \
	X(datagrams_out, SUM, "UDP datagrams echoed")                                              \
	X(datagram_drops, SUM, "UDP datagrams that could not be sent back")                        \
	X(datagrams_refused, SUM, "UDP datagrams not answered: low or own source port")            \
	X(datagrams_limited, SUM, "UDP datagrams dropped by the per-source rate limit")            \
	X(stop_discarded, SUM, "input bytes read and dropped while stopping")                      \
	X(stop_dropped_bytes, SUM, "echo bytes never sent: stop deadline reached")                 \
	X(stop_dropped_conns, SUM, "connections cut at the stop deadline")                         \
	X(upstream_connects, SUM, "relay: upstream connections made")                              \
	X(upstream_failures, SUM, "relay: upstream connects that failed or timed out")             \
	X(upstream_bytes_out, SUM, "relay: bytes sent to upstreams (client to upstream)")          \
	X(upstream_bytes_in, SUM, "relay: bytes read from upstreams (upstream to client)")         \
	X(connect_under_1ms, SUM, "relay: upstream connects that took under 1 ms")                 \
	X(connect_under_10ms, SUM, "relay: ... 1 to 10 ms")                                        \
	X(connect_under_100ms, SUM, "relay: ... 10 to 100 ms")                                     \
	X(connect_under_1s, SUM, "relay: ... 100 ms to 1 s")                                       \
	X(connect_over_1s, SUM, "relay: ... 1 s or more")                                          \
	X(connect_us, SUM, "relay: upstream connect times added up, in microseconds")              \
	X(closed_eof, SUM, "sessions that ended cleanly (FIN, or all flows done)")                 \
	X(closed_error, SUM, "sessions that ended by an error or RST")                             \
	X(closed_idle, SUM, "sessions closed by --idle-timeout")                                   \
	X(closed_write_timeout, SUM, "sessions reset by --write-timeout (peer stopped reading)")   \
	X(closed_shutdown, SUM, "sessions cut at the stop deadline")                               \
	X(refused_limit, SUM, "peers refused by --max-conns")                                      \
	X(duration_under_1ms, SUM, "sessions that lasted under 1 ms")                              \
	X(duration_under_10ms, SUM, "... 1 to 10 ms")                                              \
	X(duration_under_100ms, SUM, "... 10 to 100 ms")                                           \
	X(duration_under_1s, SUM, "... 100 ms to 1 s")                                             \
	X(duration_under_10s, SUM, "... 1 to 10 s")                                                \
	X(duration_under_100s, SUM, "... 10 to 100 s")                                             \
	X(duration_over_100s, SUM, "... 100 s or more")                                            \
	X(duration_us, SUM, "session durations added up, in microseconds")                         \
	X(session_bytes_under_1k, SUM, "sessions that moved under 1 KiB (in + out)")               \
	X(session_bytes_under_64k, SUM, "... 1 KiB to 64 KiB")                                     \
	X(session_bytes_under_1m, SUM, "... 64 KiB to 1 MiB")                                      \
	X(session_bytes_under_64m, SUM, "... 1 MiB to 64 MiB")                                     \
	X(session_bytes_over_64m, SUM, "... 64 MiB or more")                                       \
	X(session_bytes, SUM, "bytes the sessions moved, added up (in + out)")                     \
	X(events, SUM, "readiness events or completions handled")                                  \
	X(idle_events, SUM, "readiness events that moved no byte")                                 \
	X(impaired_sessions, SUM, "impairments: sessions that got at least one")                   \
	X(impair_refused, SUM, "impairments: sessions reset at once (--refuse)")                   \
	X(impair_cuts, SUM, "impairments: flows cut by --reset/--close/--stall-after")             \
	X(impair_holds, SUM, "impairments: times a flow held bytes back (delay, rate, slice)")     \
	X(datagrams_lost, SUM, "impairments: UDP datagrams dropped (--loss)")                      \
	X(datagrams_duplicated, SUM, "impairments: UDP datagrams sent twice (--duplicate)")        \
	X(datagrams_corrupted, SUM, "impairments: UDP datagrams with a bit flipped (--corrupt)")   \
	X(datagrams_delayed, SUM, "impairments: UDP datagrams held back (--delay)")

struct rb_stats {
#define RB_STATS_FIELD(name, how, doc) uint64_t name; /* doc */
	RB_STATS(RB_STATS_FIELD)
#undef RB_STATS_FIELD
};

struct rb_server;

/* Fill cfg with the defaults (tcp://127.0.0.1:7007 is added by the CLI, not here). */
void rb_config_init(struct rb_config *cfg);

/*
 * Create a server: validate cfg, open the listeners. With copy = splice, a
 * SIGPIPE disposition still at SIG_DFL is set to SIG_IGN (splice has no
 * MSG_NOSIGNAL, and a peer that leaves must not kill the process). Returns 0 and sets *out,
 * or -errno with a one-line reason naming the bad value in err (if err != NULL).
 */
int rb_server_create(const struct rb_config *cfg, struct rb_server **out, char *err, size_t errlen);

/* Run the workers until rb_server_stop(); returns 0 or -errno. */
int rb_server_run(struct rb_server *srv);

/* Ask the server to stop gracefully. Async-signal-safe and thread-safe. */
void rb_server_stop(struct rb_server *srv);

/* Ask the server to log one "rebound: stats {JSON}" line to stderr.
 * Async-signal-safe (the CLI calls it on SIGUSR1). */
void rb_server_request_stats(struct rb_server *srv);

/*
 * Liveness for a watchdog: returns how many workers have not come back to
 * their event loop since the previous call (0: all alive; the first call
 * returns 0), then asks every worker to check in again. Call it from one
 * thread at the watchdog's pace, while the server runs. Async-signal-safe.
 */
int rb_server_heartbeat(struct rb_server *srv);

/* Free a server (stopped or never run). NULL is a no-op. */
void rb_server_destroy(struct rb_server *srv);

/* Listener idx as bound (numeric host, real port; fd:N resolved), or NULL. */
const char *rb_server_listen_url(const struct rb_server *srv, size_t idx);

/* Bound port of listener idx (network byte order resolved), or -errno. */
int rb_server_port(const struct rb_server *srv, size_t idx);

/* The engine actually in use (auto resolved). */
enum rb_engine rb_server_engine(const struct rb_server *srv);

/* What the engine in use chose at start-up (for uring: ring mode, buffers,
 * receive mode, bundles), or "" if it has nothing to add. Never NULL. */
const char *rb_server_engine_detail(const struct rb_server *srv);

/* Snapshot of the counters, summed over workers. Safe from any thread. */
void rb_server_stats(const struct rb_server *srv, struct rb_stats *out);

/* The server's counters as rb_stats_json writes them, plus
 * "accepted_per_worker":[...]; returns the length written. */
int rb_server_stats_json(const struct rb_server *srv, char *buf, size_t len);

/* Write stats as one JSON object (no newline) into buf; returns its length. */
int rb_stats_json(const struct rb_stats *st, char *buf, size_t len);

/* Name of an engine, copy mode or trigger ("epoll", "writev", "edge"). */
const char *rb_engine_name(enum rb_engine e);
const char *rb_copy_name(enum rb_copy c);
const char *rb_trigger_name(enum rb_trigger t);
const char *rb_service_name(enum rb_service s);

/* Parse a name; 0 on success, -EINVAL if unknown. */
int rb_engine_parse(const char *s, enum rb_engine *out);
int rb_copy_parse(const char *s, enum rb_copy *out);
int rb_trigger_parse(const char *s, enum rb_trigger *out);
int rb_service_parse(const char *s, enum rb_service *out);

/* Every engine rebound knows (built or not), in preference order: writes up
 * to max of them to out and returns how many there are. */
size_t rb_engine_list(enum rb_engine *out, size_t max);

/* What an engine does beyond TCP stream echo, space-separated: unix (UNIX
 * stream listeners), udp, splice, relay, services (discard, chargen,
 * sockperf), level (--trigger level), timeouts (--idle-timeout,
 * --write-timeout), impair (impairments). 0, or -EINVAL for an unknown
 * engine. */
int rb_engine_features(enum rb_engine e, char *buf, size_t len);

/* 0 if the engine is built and can run here, else -errno; why gets a reason. */
int rb_engine_available(enum rb_engine e, char *why, size_t whylen);

/*
 * Impairments. rb_impair_set parses one flag's value into imp: flag is the
 * long name without its dashes ("delay", "up-rate", "seed"); 0, -ENOENT
 * for a name that is not an impairment, or -EINVAL with the reason in err.
 * Ranges are rb_config_check's (and rb_server_set_impair's) to check.
 */
int rb_impair_set(struct rb_impair *imp, const char *flag, const char *value, char *err,
                  size_t errlen);
/* The i-th impairment flag's name (without dashes), NULL past the last. */
const char *rb_impair_flag(size_t i);
/* A whole set of flags as text ("--delay 10ms --rate 1m", one or many a
 * line, '#' starts a comment) into imp, which is reset first. */
int rb_impair_parse(struct rb_impair *imp, const char *text, char *err, size_t errlen);
/* Anything configured? */
bool rb_impair_any(const struct rb_impair *imp);
/* What imp does, in the flags' own syntax ("none" if nothing); returns the length. */
int rb_impair_describe(const struct rb_impair *imp, char *buf, size_t len);
/* Replace the server's impairments while it runs: new sessions (and UDP
 * datagrams from now on) get them; open sessions keep theirs. A seed that
 * is not set keeps the current one. 0, or -EINVAL/-ENOTSUP with err. */
int rb_server_set_impair(struct rb_server *srv, const struct rb_impair *imp, char *err,
                         size_t errlen);
/* The impairments in force, their seed resolved. */
void rb_server_impair(const struct rb_server *srv, struct rb_impair *out);

/* 0 if every value of cfg is within its limits, else -EINVAL with a one-line
 * reason naming the value by its rebound(1) flag ("invalid --threads '0':
 * must be between 1 and 64"). rb_server_create checks the same. */
int rb_config_check(const struct rb_config *cfg, char *err, size_t errlen);

/* Parse a size with optional suffix k, m, g (binary); 0 or -EINVAL/-ERANGE. */
int rb_parse_size(const char *s, size_t *out);

/*
 * Log one message as the library does: nothing if level is above
 * cfg->log_level, else to cfg->log_fn, else to stderr as one line:
 * "<N>MSG" when stderr is the journal ($JOURNAL_STREAM names its device and
 * inode; N is the level), otherwise "rebound: MSG", preceded by
 * "YYYY-MM-DDTHH:MM:SS.mmmZ " when cfg->log_timestamps is set.
 */
void rb_log(const struct rb_config *cfg, enum rb_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
        __attribute__((format(printf, 3, 4)))
#endif
        ;

/*
 * The metrics endpoint: an HTTP/1.1 server in a thread of its own, off the
 * data path, serving GET /metrics (the Prometheus text format, version
 * 0.0.4: every counter of RB_STATS, the gauges and the histograms built from
 * the bucket counters) and GET /stats (rb_server_stats_json) for srv, on url
 * (tcp://HOST:PORT, tcp://[IPV6]:PORT or unix:PATH). Start it after
 * rb_server_create and stop it before rb_server_destroy. Returns 0 and sets
 * *out, or -errno with a one-line reason naming url in err (-EINVAL: a bad
 * URL).
 */
struct rb_metrics;
int rb_metrics_start(struct rb_server *srv, const char *url, struct rb_metrics **out, char *err,
                     size_t errlen);

/* The endpoint's address as bound (numeric host, real port), or NULL. */
const char *rb_metrics_url(const struct rb_metrics *m);

/* Stop the endpoint: its thread, its clients, its socket. NULL is a no-op. */
void rb_metrics_stop(struct rb_metrics *m);

#ifdef __cplusplus
}
#endif

#endif /* REBOUND_REBOUND_H */
