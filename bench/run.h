/* SPDX-License-Identifier: MIT */
/* rebound-bench run: worker threads, one epoll loop each, and their results. */
#ifndef RBB_RUN_H
#define RBB_RUN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chargen.h"
#include "hist.h"
#include "opts.h"
#include "stream.h"

#define RBB_MAX_ERRORS 10
#define RBB_ERR_LEN    256

struct rbb_worker;

/* TCP_INFO samples summed up: per connection, at the end or at an interval. */
struct rbb_tcpagg {
	uint64_t n;
	uint64_t retrans; /* tcpi_total_retrans summed */
	double rtt_sum, rttvar_sum, cwnd_sum;
	uint32_t rtt_min, rtt_max, cwnd_min, cwnd_max; /* rtt in us, cwnd in segments */
};

/* Adds @b into @a. */
void rbb_tcpagg_merge(struct rbb_tcpagg *a, const struct rbb_tcpagg *b);

struct rbb_run {
	const struct rbb_opts *o;
	unsigned n_workers;
	struct rbb_worker *workers;
	pthread_barrier_t barrier;
	atomic_int stop; /* set on SIGINT/SIGTERM or a fatal error */
	int done_fd;     /* eventfd: each worker adds 1 when it finishes */
	/* Monotonic ns, written by the main thread between the two barriers. */
	uint64_t t_start;            /* traffic starts (warmup begins) */
	uint64_t t_measure;          /* measuring starts */
	uint64_t t_end;              /* sending stops (with -n: the time limit) */
	uint64_t n_active_connected; /* active connections that connected */

	pthread_mutex_t err_lock;
	unsigned n_errors;
	char errors[RBB_MAX_ERRORS][RBB_ERR_LEN];
};

struct rbb_conn;

struct rbb_worker {
	struct rbb_run *run;
	unsigned id;
	pthread_t tid;
	int epfd;
	struct rbb_conn *conns;
	unsigned n_conns;
	struct rbb_conn **act; /* connected active connections */
	unsigned n_act;
	uint64_t *ts;   /* send time rings, depth slots per connection */
	uint64_t *bits; /* udp: outstanding-datagram rings, win bits per connection */
	unsigned win;
	uint8_t *rbuf;
	struct rbb_hist *hist;      /* message latency; --crr: transaction latency */
	struct rbb_hist *conn_hist; /* --crr: connect latency */

	uint64_t quota;      /* -n: messages this worker's connections send */
	uint64_t quota_used; /* --crr: transactions started */
	double period;       /* open loop: ns between this worker's sends */
	int64_t last_j;      /* open loop: last scheduled send slot visited */
	unsigned left;       /* connections not finished yet */
	unsigned act_left;
	bool ending; /* past t_end: no new messages */

	/* Results. */
	uint64_t msgs;  /* messages completed in the measured window */
	uint64_t bytes; /* bytes echoed in the measured window */
	uint64_t verified;
	uint64_t last_done; /* ns of the last completion */
	uint64_t lost;      /* udp datagrams that never came back */
	uint64_t late;      /* udp datagrams that came back after being given up */
	uint64_t reordered; /* udp datagrams that came back after a later one */
	/* --expect none/chargen: bytes acknowledged or received in all, and at t_measure. */
	uint64_t oneway_total;
	uint64_t oneway_at_measure;
	bool oneway_more; /* some connection stopped at its budget (run.c) */
	unsigned connected;
	unsigned connect_errors;
	unsigned unserved;               /* idle connections that did not echo their first byte */
	struct rbb_tcpagg tcpi;          /* --tcp-info: every connection at its end */
	pthread_mutex_t tcpi_lock;       /* guards tcpi_iv */
	struct rbb_tcpagg tcpi_iv;       /* --tcp-info: the latest --interval sample */
	atomic_uint_least64_t prog_msgs; /* all phases, for --interval */
	atomic_uint_least64_t prog_bytes;
};

/* Monotonic clock in ns. */
uint64_t rbb_now(void);
/* Records an error message (printf format) and stops the run if @fatal. */
void rbb_error(struct rbb_run *run, bool fatal, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
/* Sets up worker @id's connections and buffers. Returns 0 or -errno. */
int rbb_worker_init(struct rbb_worker *w, struct rbb_run *run, unsigned id);
/* Frees a worker's resources (after its thread ended). */
void rbb_worker_fini(struct rbb_worker *w);
/* Thread body: connect, barrier, barrier, traffic, drain. */
void *rbb_worker_main(void *arg);

#endif
