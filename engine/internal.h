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
#include "engines.h"
#include "poller.h"
#include "timer.h"

/* ---- intrusive doubly linked list (circular, with a sentinel) ---- */
struct rb_list {
	struct rb_list *prev, *next;
};

static inline void rb_list_init(struct rb_list *l)
{
	l->prev = l->next = l;
}

static inline bool rb_list_empty(const struct rb_list *l)
{
	return l->next == l;
}

static inline bool rb_list_unlinked(const struct rb_list *n)
{
	return n->next == n && n->prev == n;
}

/* n must not be on any list (asserted: linking a linked node corrupts two lists). */
static inline void rb_list_add_tail(struct rb_list *head, struct rb_list *n)
{
	assert(rb_list_unlinked(n));
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
}

static inline void rb_list_del(struct rb_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

/* Move every entry of src to the tail of dst; src becomes empty. */
static inline void rb_list_splice_tail(struct rb_list *dst, struct rb_list *src)
{
	if (rb_list_empty(src))
		return;
	src->next->prev = dst->prev;
	dst->prev->next = src->next;
	src->prev->next = dst;
	dst->prev = src->prev;
	rb_list_init(src);
}

#define rb_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* ---- logging (levels and sinks: rebound.h) ---- */
/* Log with the settings bound to this thread (a server's), else the defaults. */
void rb__log(enum rb_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Bind cfg's log settings to the calling thread; unbind them if bound. */
void rb__log_bind(const struct rb_config *cfg);
void rb__log_unbind(const struct rb_config *cfg);

/* At most one message per second; counts what it suppressed. */
struct rb_ratelimit {
	time_t last;
	unsigned suppressed;
};
bool rb__ratelimit_ok(struct rb_ratelimit *rl, unsigned *suppressed);

uint64_t rb__now_ms(void);

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

/* ---- stats: written only by the owning worker, read by anyone ---- */
#define RB_STAT_ADD(w, field, n)                                                           \
	__atomic_store_n(&(w)->st.field, (w)->st.field + (n), __ATOMIC_RELAXED)
#define RB_STAT_SUB(w, field, n)                                                           \
	__atomic_store_n(&(w)->st.field, (w)->st.field - (n), __ATOMIC_RELAXED)
#define RB_STAT_MAX(w, field, v)                                                           \
	do {                                                                               \
		if ((uint64_t)(v) > (w)->st.field)                                         \
			__atomic_store_n(&(w)->st.field, (uint64_t)(v), __ATOMIC_RELAXED);  \
	} while (0)

/* ---- handles: what a poller event's pointer points at ---- */
enum rb_handle_kind { RB_H_CONN = 1, RB_H_LISTENER, RB_H_CONTROL };

struct rb_handle {
	enum rb_handle_kind kind;
};

enum {
	CONN_CAN_READ = 1u << 0,  /* the socket may have input (no EAGAIN seen since) */
	CONN_CAN_WRITE = 1u << 1, /* the socket may take output */
	CONN_RD_EOF = 1u << 2,    /* peer sent FIN, or we stopped reading for good */
	CONN_PAUSED = 1u << 3,    /* at the per-connection cap */
	CONN_CLOSED = 1u << 5,    /* closed: events for it are stale */
	CONN_PEER_HUP = 1u << 7,  /* poller saw RDHUP/HUP/ERR: read to EOF or error */
	CONN_PIPE_WAIT = 1u << 8, /* splice read got EAGAIN with bytes in the pipe */
	CONN_PEER_EOF = 1u << 9,  /* read returned 0: the peer's FIN arrived */
	CONN_DISCARD = 1u << 10,  /* stopping: input is read and dropped, never echoed */
	CONN_WR_SHUT = 1u << 11,  /* our FIN is sent: waiting for the peer's (lingering) */
};

/*
 * The one list a connection's qlink is on. Moving between them goes through
 * one function (reactor.c, conn_queue), so a connection can never be on two
 * lists at once: that corrupted both and livelocked the worker (issue 9).
 */
enum rb_conn_queue {
	RB_Q_NONE = 0,
	RB_Q_READY,   /* read budget used up: run again after the others */
	RB_Q_MEMWAIT, /* needs a chunk the worker memory cap does not allow now */
	RB_Q_GRAVE,   /* closed: freed after the event batch (rule 7) */
};

struct rb_conn {
	struct rb_handle h;
	int fd;
	uint32_t flags;
	enum rb_conn_queue queue;
	uint32_t interest; /* registered with a level-triggered poller */
	struct rb_chain chain;
	/* --copy splice: socket -> pipe -> socket; pipe_rd < 0 means writev mode. */
	int pipe_rd, pipe_wr;
	size_t pipe_bytes; /* bytes in the pipe, tracked by us: EAGAIN can't tell */
	size_t pipe_cap;
	struct rb_list all;   /* worker->conns */
	struct rb_list qlink; /* the list named by queue */
};

struct rb_udp;

struct rb_listener {
	struct rb_handle h;
	int fd;
	bool pending; /* accept budget ran out: more may be waiting */
	bool active;
	bool owned;   /* this worker's own socket (UDP with SO_REUSEPORT): closed with it */
	bool is_udp;
	bool tcp;     /* a TCP socket (not UNIX): accepted sockets get TCP options */
	int port;     /* bound port (UDP: datagrams from it are never answered) */
	struct rb_udp *udp;      /* a UDP socket: echoed datagram by datagram */
	uint32_t udp_interest;   /* registered with a level-triggered poller */
	struct rb_timer retry;   /* accept back-off: descriptors or memory ran out */
};

struct rb_server;

/* Idle splice pipes kept per worker. */
#define RB_PIPE_CACHE 256

struct rb_cached_pipe {
	int rd, wr;
	size_t cap;
};

struct rb_worker {
	struct rb_server *srv;
	unsigned id;
	pthread_t thread;
	bool thread_started;
	const struct rb_engine_desc *eng;
	const struct rb_poller_ops *ops; /* readiness model: eng->poller */
	struct rb_poller *poller;
	bool edge;
	struct rb_pool pool;
	int ctl_fd; /* eventfd: stop requests */
	struct rb_handle ctl_h;
	struct rb_listener listeners[RB_MAX_LISTEN];
	size_t n_listeners;
	struct rb_list conns;
	struct rb_list ready;
	struct rb_list memwait;
	struct rb_list grave;
	int reserve_fd; /* spare descriptor for EMFILE at accept */
	bool stopping;
	struct rb_timers timers;
	struct rb_timer stop_timer; /* the graceful stop's deadline */
	struct rb_ratelimit rl_emfile;
	struct rb_ratelimit rl_pipe;
	struct rb_stats st;
	struct iovec iov[IOV_MAX];
	unsigned char scratch[16384]; /* input discarded while stopping */
	uint64_t memwait_puts;        /* pool->puts when the memwait list was last woken */
	int result;
	void *uring; /* the completion model's per-worker state */
	struct rb_cached_pipe pipes[RB_PIPE_CACHE];
	unsigned n_pipes;
	unsigned heartbeat_seen; /* the server's heartbeat round this worker last saw */
};

struct rb_server {
	struct rb_config cfg;
	struct rb_listen_set ls;
	const struct rb_engine_desc *eng;
	struct rb_worker *workers;
	unsigned n_workers;
	volatile sig_atomic_t stop_requested;
	volatile sig_atomic_t stats_requested;
	size_t pipe_size;           /* splice pipe size asked for, after pipe-max-size */
	unsigned heartbeat;         /* rb_server_heartbeat's round (watchdog.c) */
};

/* UDP sockets (udp.c). */
#define RB_UDP_BATCH 32
struct rb_udp *rb__udp_create(int fd, int port);
void rb__udp_destroy(struct rb_worker *w, struct rb_udp *u);
void rb__udp_run(struct rb_worker *w, struct rb_udp *u, uint32_t events);
bool rb__udp_pending(const struct rb_udp *u);
uint32_t rb__udp_interest(const struct rb_udp *u);

/* Splice pipes (pipes.c). */
int rb__pipe_max_size(void);
int rb__pipe_get(struct rb_worker *w, struct rb_conn *c);
void rb__pipe_put(struct rb_worker *w, struct rb_conn *c, bool verify);
void rb__pipes_fini(struct rb_worker *w);

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
/* Options every accepted TCP socket gets: TCP_NODELAY, keepalive, user timeout. */
void rb__tune_accepted(struct rb_worker *w, int fd, bool tcp);

#endif
