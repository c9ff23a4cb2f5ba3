/* SPDX-License-Identifier: MIT */
/* Internal structures shared by the engine's files. Not installed. */
#ifndef REBOUND_INTERNAL_H
#define REBOUND_INTERNAL_H

#include <assert.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

#include "rb_config.h"
#include "rebound/rebound.h"
#include "iopool.h"
#include "list.h"
#include "engines.h"
#include "pipes.h"
#include "poller.h"
#include "session.h"
#include "copy.h"
#include "timer.h"
#include "impair.h"

/* ---- logging (levels and sinks: rebound.h) ---- */
/* Log with the settings bound to this thread (a server's), else the defaults. */
void rb__log(enum rb_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Bind cfg's log settings to the calling thread; unbind them if bound. */
void rb__log_bind(const struct rb_config *cfg);
void rb__log_unbind(const struct rb_config *cfg);
/* An event: logged as text, or with --log-format json as an object made of
 * fields (comma-separated "name":value pairs, no braces). */
void rb__log_event(enum rb_log_level level, const char *text, const char *fields);
/* A report someone asked for (SIGUSR1's stats): an event at NOTICE, logged
 * whatever the configured level. */
void rb__log_report(const char *text, const char *fields);
/* Room for rb_server_stats_json with every counter at its widest and
 * RB_MAX_THREADS workers (about 4 KiB today). */
#define RB_STATS_JSON_MAX 6144
/* s as the inside of a JSON string, NUL-terminated in out; returns its length. */
size_t rb__json_escape(char *out, size_t len, const char *s);

/* At most one message per second; counts what it suppressed. */
struct rb_ratelimit {
	time_t last;
	unsigned suppressed;
};
bool rb__ratelimit_ok(struct rb_ratelimit *rl, unsigned *suppressed);

/* CLOCK_MONOTONIC in microseconds: the timers' clock (timer.h). */
uint64_t rb__now_us(void);

/* ---- listeners ---- */
struct rb_addr {
	struct sockaddr_storage ss;
	socklen_t len;
	bool is_unix;
	bool is_udp;
	int inherited_fd; /* fd:N: a socket opened by someone else (socket activation) */
	dev_t file_dev;   /* unix:PATH as bound: the file we may remove at exit */
	ino_t file_ino;
	char url[160];
};

struct rb_listen_opts {
	int backlog;
	bool reuseport;     /* SO_REUSEPORT: one socket per worker */
	unsigned unix_mode; /* mode of a unix:PATH socket file */
};

/* Parse a --listen URL; 0 or -EINVAL with a reason in err. */
int rb__parse_url(const char *url, struct rb_addr *out, char *err, size_t errlen);
/* Open, bind and listen; returns the fd or -errno (reason in err). */
int rb__listen(struct rb_addr *a, const struct rb_listen_opts *o, char *err, size_t errlen);
/* Remove a unix:PATH socket file, only if it is still the one we bound. */
void rb__unix_unlink_if_ours(const struct rb_addr *a);
/* Set a->url from the bound address (numeric host, real port). */
void rb__addr_format(struct rb_addr *a);

/*
 * The server's listening sockets. Every worker holds them until it stops
 * accepting; the last one to let go closes them, so new peers are refused
 * rather than left waiting in a backlog nobody accepts from.
 */
struct rb_listen_set {
	struct rb_addr addrs[RB_MAX_LISTEN];
	int fds[RB_MAX_LISTEN];
	int ports[RB_MAX_LISTEN];
	/* UDP with several workers: each has its own socket (SO_REUSEPORT), so
	 * the kernel keeps a flow on one worker and never reorders it. */
	bool per_worker[RB_MAX_LISTEN];
	size_t n;
	unsigned holders;
};

/* Empty set: no descriptors. */
void rb__listen_set_init(struct rb_listen_set *ls);
/* One holder lets go; the last closes every socket. */
void rb__listen_set_release(struct rb_listen_set *ls);
/* Close (and unlink) every listening socket; idempotent. */
void rb__listen_set_close(struct rb_listen_set *ls);

/* ---- the chargen stream (chargen.c, RFC 864) ---- */
#define RB_CHARGEN_LINE   74u /* 72 characters, CR, LF */
#define RB_CHARGEN_LINES  95u /* lines before the stream repeats */
#define RB_CHARGEN_PERIOD (RB_CHARGEN_LINE * RB_CHARGEN_LINES)
/* The stream from its start, 2 * RB_CHARGEN_PERIOD bytes. */
const unsigned char *rb__chargen_pattern(void);

/* ---- the relay's upstream (upstream.c) ---- */
#define RB_UPSTREAM_ADDRS 16

struct rb_upstream {
	struct sockaddr_storage addr[RB_UPSTREAM_ADDRS];
	socklen_t len[RB_UPSTREAM_ADDRS];
	unsigned n;
	bool is_unix;
	unsigned last_ok; /* the address that last connected: tried first */
	char url[160];
};

/* Parse and resolve a --forward URL (every address, in order); 0 or -EINVAL. */
int rb__upstream_parse(const char *url, struct rb_upstream *up, char *err, size_t errlen);
/* A non-blocking socket connecting to address i into *fd_out: 0 connected,
 * -EINPROGRESS (wait for writability), or -errno (no descriptor left open). */
int rb__upstream_connect(const struct rb_upstream *up, unsigned i, int *fd_out);

/* ---- stats: written only by the owning worker, read by anyone ---- */
#define RB_STAT_ADD(w, field, n)                                                                   \
	__atomic_store_n(&(w)->st.field, (w)->st.field + (n), __ATOMIC_RELAXED)
#define RB_STAT_SUB(w, field, n)                                                                   \
	__atomic_store_n(&(w)->st.field, (w)->st.field - (n), __ATOMIC_RELAXED)
#define RB_STAT_MAX(w, field, v)                                                                   \
	do {                                                                                       \
		if ((uint64_t)(v) > (w)->st.field)                                                 \
			__atomic_store_n(&(w)->st.field, (uint64_t)(v), __ATOMIC_RELAXED);         \
	} while (0)

struct rb_udp;

struct rb_listener {
	struct rb_handle h;
	int fd;
	bool pending; /* accept budget ran out: more may be waiting */
	bool active;
	bool owned; /* this worker's own socket (UDP with SO_REUSEPORT): closed with it */
	bool is_udp;
	bool tcp;              /* a TCP socket (not UNIX): accepted sockets get TCP options */
	int port;              /* bound port (UDP: datagrams from it are never answered) */
	struct rb_udp *udp;    /* a UDP socket: echoed datagram by datagram */
	uint32_t udp_interest; /* registered with a level-triggered poller */
	struct rb_timer retry; /* accept back-off: descriptors or memory ran out */
};

struct rb_server;

struct rb_worker {
	struct rb_server *srv;
	unsigned id;
	pthread_t thread;
	bool thread_started;
	const struct rb_engine_desc *eng;
	void *model; /* the model's own per-worker state (reactor.c, proactor_uring.c) */
	const struct rb_copy_ops *copy; /* how new flows move bytes (--copy) */
	struct rb_pool pool;
	struct rb_pipe_cache pipes;
	int ctl_fd; /* eventfd: stop and stats requests, heartbeats */
	struct rb_listener listeners[RB_MAX_LISTEN];
	size_t n_listeners;
	int reserve_fd; /* spare descriptor for EMFILE at accept */
	bool stopping;
	struct rb_timers timers;
	struct rb_timer stop_timer; /* the graceful stop's deadline */
	struct rb_ratelimit rl_emfile;
	struct rb_ratelimit rl_pipe;
	struct rb_ratelimit rl_upstream;
	struct rb_stats st;
	struct iovec iov[IOV_MAX];
	unsigned char scratch[16384]; /* input discarded while stopping */
	int result;
	unsigned heartbeat_seen;     /* the server's heartbeat round this worker last saw */
	uint64_t session_seq;        /* sessions opened: the next one's number */
	uint64_t now_us;             /* the clock (rb__now_us) when the last wait returned */
	struct rb_timer stats_timer; /* worker 0: --stats-interval */
	struct rb_stats stats_prev;  /* ... the last line's counters */
	uint64_t stats_prev_us;
};

struct rb_server {
	struct rb_config cfg;
	struct rb_listen_set ls;
	const struct rb_engine_desc *eng;
	struct rb_worker *workers;
	unsigned n_workers;
	volatile sig_atomic_t stop_requested;
	volatile sig_atomic_t stats_requested;
	size_t pipe_size;             /* splice pipe size asked for, after pipe-max-size */
	struct rb_upstream *upstream; /* --forward: where relayed sessions connect */
	unsigned n_sessions;          /* open sessions, all workers (--max-conns) */
	unsigned heartbeat;           /* rb_server_heartbeat's round (watchdog.c) */
	/* Impairments in force (impair.h): NULL, or read with an acquire load
	 * when a session opens; replaced by rb_server_set_impair. */
	struct rb_impair_set *impair;
	pthread_mutex_t impair_lock; /* writers of impair */
};

/* UDP sockets (udp.c). */
#define RB_UDP_BATCH 32
struct rb_udp *rb__udp_create(int fd, int port);
void rb__udp_destroy(struct rb_worker *w, struct rb_udp *u);
void rb__udp_run(struct rb_worker *w, struct rb_udp *u, uint32_t events);
bool rb__udp_pending(const struct rb_udp *u);
uint32_t rb__udp_interest(const struct rb_udp *u);
/*
 * What every engine's UDP echo refuses (udp.c): a source port below 1024
 * (unless --udp-allow-low-ports) or equal to the served port (a loop), and
 * more than --udp-rate answers a second to one source address. One guard
 * per socket: rl is its token-bucket table, made on first use.
 */
struct rb_udp_guard {
	int port;
	struct rb_udp_rl *rl;
};
/* May `from` be answered now? Counts datagrams_refused or datagrams_limited
 * when not; `now` (us) is read only when --udp-rate is set. */
bool rb__udp_guard_ok(struct rb_worker *w, struct rb_udp_guard *g, const struct sockaddr *from,
                      uint64_t now);
void rb__udp_guard_fini(struct rb_udp_guard *g);
/* chargen over UDP: lines per answer (RFC 864 asks for at most 512 bytes). */
#define RB_CHARGEN_UDP_LINES 6

/*
 * Workers (worker.c): what every worker has whichever model drives it, and
 * the helpers both models share. The server calls the model (through the
 * engine table) after rb__worker_init and before rb__worker_fini.
 */
int rb__worker_init(struct rb_worker *w, struct rb_server *srv, unsigned id);
void rb__worker_fini(struct rb_worker *w);
/* Drain the control eventfd and serve a stats request; true if a stop is asked. */
bool rb__worker_control(struct rb_worker *w);
/* Enter the stopping state and arm the deadline timer, which calls
 * on_deadline(&w->stop_timer, w); false if already stopping. */
bool rb__worker_begin_stop(struct rb_worker *w, rb_timer_fn *on_deadline);
/* This worker accepts no more: the last one to say so closes the listeners. */
void rb__worker_release_listeners(struct rb_worker *w);
/* A readiness model's stop: each active listener unwatched (by the model's
 * `unwatch`), its pending accepts and back-off forgotten, then released. */
void rb__worker_listeners_off(struct rb_worker *w,
                              void (*unwatch)(struct rb_worker *w, struct rb_listener *l));
/* What an accept error means for the listener. */
enum rb_accept_next {
	RB_ACCEPT_RETRY,   /* try again now (a peer gave up, or the reserve served one) */
	RB_ACCEPT_IDLE,    /* nothing waits: wait for readiness */
	RB_ACCEPT_BACKOFF, /* out of descriptors or memory: retry after RB_ACCEPT_BACKOFF_MS */
};
#define RB_ACCEPT_BACKOFF_MS 100
enum rb_accept_next rb__accept_error(struct rb_worker *w, int lfd, int err);
/* A connection we cannot serve (err < 0 says why): closed, counted, logged. */
void rb__refuse(struct rb_worker *w, int fd, int err);
/*
 * The stop deadline, before a connection is closed: empty its receive queue
 * (or close() sends an RST); with `pending` echo bytes still ours, reset it
 * (a FIN would pass a cut stream off as complete) and count it with what it
 * loses, ours and the kernel's unsent queue.
 */
void rb__stop_deadline_close(struct rb_worker *w, int fd, uint64_t pending);
/* --max-conns: may one more session open? If not, fd is reset, closed and
 * counted, and the answer is false. */
bool rb__worker_admit(struct rb_worker *w, int fd);
/* Give back an admission whose session could not be opened after all. */
void rb__worker_unadmit(struct rb_worker *w);
/* A session opened (numbered, timed, logged) or is closing (counted by
 * reason, logged, and its place under --max-conns freed). */
void rb__session_opened(struct rb_worker *w, struct rb_session *s);
void rb__session_closing(struct rb_worker *w, struct rb_session *s, enum rb_close_reason why);
/* A relay's upstream connected after `us` microseconds: counted (stats and
 * the connect-time histogram). */
void rb__upstream_connected(struct rb_worker *w, uint64_t us);
/*
 * --idle-timeout and --write-timeout: one timer per session, in both models.
 * rb__timeouts_due: when that timer is next due (UINT64_MAX: never): the
 * idle deadline, or the write deadline if earlier, counted from the
 * output's last progress when output is `pending`, else from `now` (to look
 * again in case output is stuck by then). rb__timeouts_expired: which of
 * the two has passed at `now` (the write timeout first: its reset drops
 * what the peer would not take).
 */
enum rb_timeout { RB_TIMEOUT_NONE, RB_TIMEOUT_WRITE, RB_TIMEOUT_IDLE };
uint64_t rb__timeouts_due(const struct rb_config *cfg, const struct rb_session *s, bool pending,
                          uint64_t now);
enum rb_timeout rb__timeouts_expired(const struct rb_config *cfg, const struct rb_session *s,
                                     bool pending, uint64_t now);
/* SO_LINGER 0 on each of the session's open sockets: their close sends RST. */
void rb__session_linger0(struct rb_session *s);
/* Options every accepted TCP socket gets: TCP_NODELAY, keepalive, user timeout. */
void rb__tune_accepted(struct rb_worker *w, int fd, bool tcp);

#endif
