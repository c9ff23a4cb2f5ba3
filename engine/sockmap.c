/* SPDX-License-Identifier: MIT */
/*
 * The in-kernel model (--engine sockmap): every accepted TCP socket joins a
 * sockhash whose stream-verdict program (bpf/sockmap_echo.bpf.c) redirects
 * its input to its own egress, so echoed bytes never reach user space. The
 * worker accepts, inserts, and watches with epoll only for hang-ups and
 * errors; the program counts the bytes (per-CPU) and the worker publishes
 * them in the usual counters. docs/sockmap.md has the measurements and the
 * differences from the other engines.
 *
 * Three things the kernel does not do for us, handled here:
 *  - bytes that arrived before the socket joined the map wait for the next
 *    segment: SO_RCVLOWAT (tcp_set_rcvlowat -> tcp_data_ready) runs the
 *    verdict over the whole receive queue, in order, at once;
 *  - a socket the peer already half-closed cannot join (the kernel admits
 *    only ESTABLISHED ones): its last bytes are echoed here, in user space;
 *  - the FIN: after the peer's, the echo still queued in the psock must
 *    reach the send queue before ours. The program's counts (bytes in and
 *    redirected) against TCP_INFO and SIOCOUTQ say when; epoll's EPOLLOUT
 *    and a backing-off timer say when to look again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <linux/capability.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "internal.h"
#include "sockmap.h"
#include "sockmap_echo.h"
#include "sockmap_echo.skel.h"

#ifndef SO_COOKIE
#define SO_COOKIE 57
#endif
#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

/* TCP states (tcpi_state; include/net/tcp_states.h, stable ABI). The
 * glibc enum is in <netinet/tcp.h>, which clashes with <linux/tcp.h>. */
enum { ST_TIME_WAIT = 6, ST_CLOSE_WAIT = 8, ST_LAST_ACK = 9, ST_CLOSING = 11 };

#define EVENT_BATCH 256
#define READ_IOV    4
/* The FIN wait re-checks after 1 ms, then backs off to this. */
#define DRAIN_MAX_MS 64
/* The kernel echoes while the worker sleeps: its counters are published at
 * every wake-up and, while connections are open, this often. */
#define PUBLISH_MS 100
/* Sockhash and record slots per worker: RLIMIT_NOFILE, within these. */
#define SLOTS_MIN 1024u
#define SLOTS_MAX (256u << 10)

enum {
	SC_MAPPED = 1u << 0,    /* in the sockhash: the kernel echoes */
	SC_USER = 1u << 1,      /* echoed here: it could not join (peer half-closed) */
	SC_PEER_FIN = 1u << 2,  /* the peer's FIN arrived */
	SC_WR_SHUT = 1u << 3,   /* our FIN is sent */
	SC_WAIT_OUT = 1u << 4,  /* on the drain list, EPOLLOUT registered */
	SC_CLOSED = 1u << 5,    /* closed: events for it are stale */
	SC_CAN_READ = 1u << 6,  /* user path: input may be waiting */
	SC_CAN_WRITE = 1u << 7, /* user path: the socket may take output */
	SC_EOF = 1u << 8,       /* user path: read returned 0 */
};

struct sm_conn {
	struct rb_handle h; /* RB_H_SOCK: what epoll reports */
	int fd;
	unsigned flags;
	uint64_t cookie;
	struct rb_list all;  /* the worker's connections */
	struct rb_list link; /* the drain list, or the graveyard once closed */
	/* The shared session record: accounting and the connection log, and,
	 * on the user path, its flow's chain. */
	struct rb_session s;
	enum rb_close_reason why;
};

/* The user path's buffer: the session's one flow. */
#define CHAIN(c) (&(c)->s.flow[0].chain)

struct sm_worker {
	struct sockmap_echo *skel;
	int epfd;
	bool no_pwait2; /* the kernel lacks epoll_pwait2 (poller.h) */
	int socks_fd, conns_fd, stats_fd;
	struct ring_buffer *ring;
	struct rb_handle ring_h;
	struct rb_handle ctl_h;
	struct rb_list conns;
	struct rb_list draining; /* FIN received (or stopping), echo still leaving */
	struct rb_list grave;    /* closed in this batch, freed after it (rule 7) */
	struct rb_timer drain_timer;
	unsigned drain_ms;
	struct rb_timer publish_timer;
	unsigned ncpu;
	struct rb_sm_stats *cpu; /* one per possible CPU: a per-CPU lookup's buffer */
	uint64_t user_in, user_out, user_discarded; /* the user path's bytes */
	uint64_t lost_seen;
	uint32_t slots;
	struct rb_ratelimit rl_overflow;
	char detail[160];
};

static struct sm_worker *sm_of(const struct rb_worker *w)
{
	return w->model;
}

/* ---- libbpf's messages go to our log, at debug level ---- */

__attribute__((format(printf, 2, 0))) static int libbpf_log(enum libbpf_print_level level,
                                                            const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	if (level == LIBBPF_DEBUG)
		return 0;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && msg[n - 1] == '\n')
		msg[--n] = '\0';
	rb__log(RB_LOG_DEBUG, "libbpf: %s", msg);
	return 0;
}

static void libbpf_route_log(void)
{
	libbpf_set_print(libbpf_log);
}

/* libbpf's print hook is process-wide: set it once. */
static void libbpf_setup(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, libbpf_route_log);
}

/* ---- the probe ---- */

static bool has_cap(int cap)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {{0}};

	if (syscall(SYS_capget, &h, d) < 0)
		return false;
	return d[cap / 32].effective & (1u << (cap % 32));
}

/* EPERM: name what is missing, or say that a policy refused. */
static int eperm_reason(char *why, size_t whylen, const char *what)
{
	static const struct {
		int cap;
		const char *name;
	} need[] = {{CAP_BPF, "CAP_BPF"},
	            {CAP_NET_ADMIN, "CAP_NET_ADMIN"},
	            {CAP_PERFMON, "CAP_PERFMON"}};
	char missing[64] = "";
	bool admin = has_cap(CAP_SYS_ADMIN);

	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		if (admin || has_cap(need[i].cap))
			continue;
		snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), "%s%s",
		         *missing ? ", " : "", need[i].name);
	}
	if (*missing)
		snprintf(why, whylen,
		         "engine 'sockmap' cannot run here: %s needs CAP_BPF, CAP_NET_ADMIN and "
		         "CAP_PERFMON (missing: %s)",
		         what, missing);
	else
		snprintf(why, whylen,
		         "engine 'sockmap' cannot run here: %s was refused (EPERM) with the "
		         "capabilities it needs: BPF is disabled by a security policy or a "
		         "seccomp filter",
		         what);
	return -EPERM;
}

int rb__sockmap_probe(char *why, size_t whylen)
{
	char dummy[8];
	struct sockmap_echo *skel;
	int fd, err;

	if (!why) {
		why = dummy;
		whylen = sizeof(dummy);
	}
	libbpf_setup();
	fd = bpf_map_create(BPF_MAP_TYPE_SOCKHASH, NULL, sizeof(uint64_t), sizeof(uint64_t), 1,
	                    NULL);
	if (fd < 0) {
		err = -fd;
		if (err == ENOSYS) {
			snprintf(why, whylen,
			         "engine 'sockmap' cannot run here: the kernel has no bpf() system "
			         "call (CONFIG_BPF_SYSCALL), or a seccomp filter hides it");
			return -ENOSYS;
		}
		if (err == EPERM)
			return eperm_reason(why, whylen, "creating a sockhash");
		if (err == EINVAL) {
			snprintf(why, whylen,
			         "engine 'sockmap' cannot run here: the kernel has no sockhash "
			         "(CONFIG_BPF_STREAM_PARSER)");
			return -ENOTSUP;
		}
		snprintf(why, whylen, "engine 'sockmap' cannot run here: creating a sockhash: %s",
		         strerror(err));
		return -ENOTSUP;
	}
	close(fd);
	if (access("/sys/kernel/btf/vmlinux", R_OK) < 0) {
		snprintf(why, whylen,
		         "engine 'sockmap' cannot run here: the kernel has no BTF "
		         "(/sys/kernel/btf/vmlinux), which the program needs to read TCP state");
		return -ENOTSUP;
	}
	skel = sockmap_echo__open();
	if (!skel) {
		snprintf(why, whylen, "engine 'sockmap' cannot run here: %s", strerror(errno));
		return -ENOMEM;
	}
	bpf_map__set_max_entries(skel->maps.socks, 1);
	bpf_map__set_max_entries(skel->maps.conns, 1);
	err = sockmap_echo__load(skel);
	if (err == -EPERM) {
		sockmap_echo__destroy(skel);
		return eperm_reason(why, whylen, "loading the program");
	}
	if (err < 0) {
		snprintf(why, whylen, "engine 'sockmap' cannot run here: loading the program: %s",
		         strerror(-err));
		sockmap_echo__destroy(skel);
		return -ENOTSUP;
	}
	err = bpf_prog_attach(bpf_program__fd(skel->progs.rb_sm_verdict),
	                      bpf_map__fd(skel->maps.socks), BPF_SK_SKB_STREAM_VERDICT, 0);
	sockmap_echo__destroy(skel);
	if (err < 0) {
		snprintf(why, whylen,
		         "engine 'sockmap' cannot run here: attaching the verdict program: %s",
		         strerror(-err));
		return -ENOTSUP;
	}
	return 0;
}

/* ---- counters ---- */

#define STORE(w, field, v) __atomic_store_n(&(w)->st.field, (uint64_t)(v), __ATOMIC_RELAXED)

static void scan_overflows(struct rb_worker *w);

/*
 * Publish the program's counters (summed over CPUs) with the user path's.
 */
static void sm_publish(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);
	struct rb_sm_stats sum = {0};
	uint32_t zero = 0;

	if (bpf_map_lookup_elem(sm->stats_fd, &zero, sm->cpu) == 0) {
		for (unsigned i = 0; i < sm->ncpu; i++) {
			const struct rb_sm_stats *c = &sm->cpu[i];
			sum.bytes_in += c->bytes_in;
			sum.bytes_out += c->bytes_out;
			sum.discarded += c->discarded;
			sum.overflowed += c->overflowed;
			sum.lost_events += c->lost_events;
			sum.strays += c->strays;
			if (c->peak > sum.peak)
				sum.peak = c->peak;
		}
	}
	STORE(w, bytes_in, sum.bytes_in + sm->user_in);
	STORE(w, bytes_out, sum.bytes_out + sm->user_out);
	STORE(w, stop_discarded, sum.discarded + sm->user_discarded);
	RB_STAT_MAX(w, peak_conn_buffered, sum.peak);
	if (sum.lost_events != sm->lost_seen) {
		/* The ring buffer was full: find the overflowed ones ourselves. */
		sm->lost_seen = sum.lost_events;
		scan_overflows(w);
	}
}

/*
 * After sm_publish: the connections closed in this batch are accounted
 * (closed, by reason, durations and sizes, the log) and freed. A reader
 * that sees one closed sees its bytes counted.
 */
static void bury(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);

	__atomic_thread_fence(__ATOMIC_RELEASE);
	while (!rb_list_empty(&sm->grave)) {
		struct sm_conn *c = rb_container_of(sm->grave.next, struct sm_conn, link);
		rb_list_del(&c->link);
		rb__session_closing(w, &c->s, c->why);
		free(c);
	}
}

static void publish_timer_fire(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct sm_worker *sm = sm_of(w);

	/* sm_run publishes after the timers; this only keeps the tick going. */
	if (!rb_list_empty(&sm->conns))
		rb__timer_arm(&w->timers, t, rb__now_us() + rb__ms_to_us(PUBLISH_MS));
}

/* ---- connections ---- */

static void drain_unwait(struct rb_worker *w, struct sm_conn *c)
{
	struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = c};

	if (!(c->flags & SC_WAIT_OUT))
		return;
	c->flags &= ~SC_WAIT_OUT;
	rb_list_del(&c->link);
	if (!(c->flags & SC_CLOSED))
		epoll_ctl(sm_of(w)->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct rb_worker *w, struct sm_conn *c, enum rb_close_reason why)
{
	struct sm_worker *sm = sm_of(w);
	struct rb_sm_conn rec;

	if (c->flags & SC_CLOSED)
		return;
	drain_unwait(w, c);
	/* close() takes it out of the sockhash and of epoll. */
	close(c->fd);
	if (c->flags & SC_MAPPED) {
		/* The session's bytes, for its size and the connection log. */
		if (bpf_map_lookup_elem(sm->conns_fd, &c->cookie, &rec) == 0) {
			c->s.bytes_in = rec.in;
			c->s.bytes_out = rec.out;
		}
		bpf_map_delete_elem(sm->conns_fd, &c->cookie);
	}
	if (CHAIN(c)->bytes)
		RB_STAT_SUB(w, buffered, CHAIN(c)->bytes);
	rb_chain_release(&w->pool, CHAIN(c));
	rb_list_del(&c->all);
	c->flags = SC_CLOSED;
	c->why = why;
	rb_list_add_tail(&sm->grave, &c->link);
}

/* Close with an RST: the peer must not take a cut stream for a whole one. */
static void conn_reset(struct rb_worker *w, struct sm_conn *c)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	conn_close(w, c, RB_CLOSE_ERROR);
}

/* TCP_INFO's bytes received count the peer's FIN as one: 1 once it came. */
static uint64_t peer_fin_in(const struct tcp_info *ti)
{
	switch (ti->tcpi_state) {
	case ST_TIME_WAIT:
	case ST_CLOSE_WAIT:
	case ST_LAST_ACK:
	case ST_CLOSING:
		return ti->tcpi_bytes_received > 0;
	default:
		return 0;
	}
}

/*
 * Is every byte this connection received past its verdict, and every byte
 * redirected in the send queue? Returns 1 (and *pending = 0), 0 with the
 * bytes still in the psock in *pending, or -errno. The reads go in the
 * order that can only under-count what was sent: TCP_INFO first (bytes
 * received and acknowledged), the program's record, then SIOCOUTQ.
 */
static int mapped_settled(struct rb_worker *w, struct sm_conn *c, uint64_t *pending)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	struct rb_sm_conn rec;
	uint64_t sent;
	int outq = 0;

	*pending = 0;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return -errno;
	if (bpf_map_lookup_elem(sm_of(w)->conns_fd, &c->cookie, &rec) < 0)
		return -errno;
	if (ioctl(c->fd, SIOCOUTQ, &outq) < 0 || outq < 0)
		outq = 0;
	sent = ti.tcpi_bytes_acked + (uint64_t)outq;
	*pending = rec.out > sent ? rec.out - sent : 0;
	return rec.in >= ti.tcpi_bytes_received - peer_fin_in(&ti) && *pending == 0;
}

static void drain_timer_fire(struct rb_timer *t, void *arg);

/* Look again on the next EPOLLOUT, or when the drain timer fires. */
static void drain_wait(struct rb_worker *w, struct sm_conn *c)
{
	struct sm_worker *sm = sm_of(w);
	struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLOUT | EPOLLET, .data.ptr = c};

	if (!(c->flags & SC_WAIT_OUT)) {
		c->flags |= SC_WAIT_OUT;
		rb_list_add_tail(&sm->draining, &c->link);
		epoll_ctl(sm->epfd, EPOLL_CTL_MOD, c->fd, &ev);
	}
	if (!rb__timer_armed(&sm->drain_timer))
		rb__timer_arm(&w->timers, &sm->drain_timer,
		              rb__now_us() + rb__ms_to_us(sm->drain_ms));
}

/*
 * A mapped connection after the peer's FIN, or while stopping: once its
 * echo has left the psock, our FIN; then close (the peer's FIN is in), or,
 * stopping, wait for the peer's FIN with input discarded by the program.
 */
static void mapped_progress(struct rb_worker *w, struct sm_conn *c)
{
	uint64_t pending;
	int rc;

	if (c->flags & SC_CLOSED)
		return;
	if (c->flags & SC_WR_SHUT) {
		if (c->flags & SC_PEER_FIN)
			conn_close(w, c, RB_CLOSE_EOF);
		return;
	}
	if (!(c->flags & SC_PEER_FIN) && !w->stopping)
		return;
	rc = mapped_settled(w, c, &pending);
	if (rc < 0) {
		conn_close(w, c, RB_CLOSE_ERROR);
		return;
	}
	if (rc == 0) {
		drain_wait(w, c);
		return;
	}
	drain_unwait(w, c);
	shutdown(c->fd, SHUT_WR);
	c->flags |= SC_WR_SHUT;
	if (c->flags & SC_PEER_FIN)
		conn_close(w, c, RB_CLOSE_EOF);
}

static void drain_timer_fire(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct sm_worker *sm = sm_of(w);
	struct rb_list snap, *it;

	(void)t;
	rb_list_init(&snap);
	rb_list_splice_tail(&snap, &sm->draining);
	while (!rb_list_empty(&snap)) {
		it = snap.next;
		rb_list_del(it);
		rb_list_add_tail(&sm->draining, it);
		mapped_progress(w, rb_container_of(it, struct sm_conn, link));
	}
	if (rb_list_empty(&sm->draining)) {
		sm->drain_ms = 1;
		return;
	}
	/* A peer reading slowly: EPOLLOUT edges come as it reads; the timer is
	 * for the last bytes, which may leave the psock after the last edge. */
	if (sm->drain_ms < DRAIN_MAX_MS)
		sm->drain_ms *= 2;
	rb__timer_arm(&w->timers, &sm->drain_timer, rb__now_us() + rb__ms_to_us(sm->drain_ms));
}

/*
 * The user path: a peer that half-closed before its socket could join the
 * sockhash (the kernel admits only ESTABLISHED sockets). Its last bytes are
 * read and written back here, capped like any connection, then our FIN.
 */
static void user_run(struct rb_worker *w, struct sm_conn *c)
{
	struct sm_worker *sm = sm_of(w);
	size_t cap = w->srv->cfg.conn_buffer;
	struct iovec iov[READ_IOV];
	bool progress = true;

	while (progress && !(c->flags & SC_CLOSED)) {
		progress = false;
		while (CHAIN(c)->bytes > 0 && (c->flags & SC_CAN_WRITE)) {
			int n = rb_chain_write_iov(&w->pool, CHAIN(c), w->iov, IOV_MAX);
			struct msghdr mh = {.msg_iov = w->iov, .msg_iovlen = (size_t)n};
			ssize_t r = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

			RB_STAT_ADD(w, write_calls, 1);
			if (r > 0) {
				rb_chain_consume(&w->pool, CHAIN(c), (size_t)r);
				sm->user_out += (uint64_t)r;
				c->s.bytes_out += (uint64_t)r;
				RB_STAT_SUB(w, buffered, (uint64_t)r);
				progress = true;
			} else if (r < 0 && errno == EAGAIN) {
				c->flags &= ~SC_CAN_WRITE;
			} else if (!(r < 0 && errno == EINTR)) {
				conn_close(w, c, RB_CLOSE_ERROR);
				return;
			}
		}
		if ((c->flags & SC_EOF) && CHAIN(c)->bytes == 0) {
			shutdown(c->fd, SHUT_WR);
			conn_close(w, c, RB_CLOSE_EOF);
			return;
		}
		if (!(c->flags & SC_CAN_READ) || (c->flags & SC_EOF) || CHAIN(c)->bytes >= cap)
			continue;
		ssize_t r;
		if (w->stopping) {
			/* Stopping: what the peer still sends is dropped, never echoed. */
			r = recv(c->fd, w->scratch, sizeof(w->scratch), MSG_DONTWAIT);
			RB_STAT_ADD(w, read_calls, 1);
			if (r > 0)
				sm->user_discarded += (uint64_t)r;
		} else {
			int n = rb_chain_read_iov(&w->pool, CHAIN(c), iov, READ_IOV,
			                          cap - CHAIN(c)->bytes);
			if (n < 0) {
				/* No memory for it now: wait for our writes, else give up. */
				if (CHAIN(c)->bytes == 0)
					conn_reset(w, c);
				continue;
			}
			r = readv(c->fd, iov, n);
			RB_STAT_ADD(w, read_calls, 1);
			rb_chain_commit(&w->pool, CHAIN(c), r > 0 ? (size_t)r : 0);
			if (r > 0) {
				sm->user_in += (uint64_t)r;
				c->s.bytes_in += (uint64_t)r;
				RB_STAT_ADD(w, buffered, (uint64_t)r);
				RB_STAT_MAX(w, peak_buffered, w->st.buffered);
				RB_STAT_MAX(w, peak_conn_buffered, CHAIN(c)->bytes);
			}
		}
		if (r > 0) {
			progress = true;
		} else if (r == 0) {
			c->flags |= SC_EOF | SC_PEER_FIN;
			progress = true;
		} else if (errno == EAGAIN) {
			c->flags &= ~SC_CAN_READ;
		} else if (errno != EINTR) {
			conn_close(w, c, RB_CLOSE_ERROR);
			return;
		} else {
			progress = true;
		}
	}
}

static void conn_event(struct rb_worker *w, struct sm_conn *c, uint32_t ev)
{
	if (c->flags & SC_CLOSED)
		return; /* stale: closed earlier in this batch (rule 7) */
	if (ev & (EPOLLERR | EPOLLHUP)) {
		int err = 0;
		socklen_t len = sizeof(err);

		/* Shut both ways: an RST, or our FIN and the peer's while lingering. */
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err == 0 && (c->flags & SC_WR_SHUT)) {
			conn_close(w, c, RB_CLOSE_EOF);
			return;
		}
		if (err != 0 || !(c->flags & SC_USER)) {
			conn_close(w, c, RB_CLOSE_ERROR);
			return;
		}
	}
	if (c->flags & SC_USER) {
		if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			c->flags |= SC_CAN_READ;
		if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
			c->flags |= SC_CAN_WRITE;
		user_run(w, c);
		return;
	}
	if (ev & EPOLLRDHUP)
		c->flags |= SC_PEER_FIN;
	mapped_progress(w, c);
}

static void conn_new(struct rb_worker *w, int fd, bool tcp)
{
	struct sm_worker *sm = sm_of(w);
	struct rb_sm_conn rec = {0};
	struct sm_conn *c;
	socklen_t len = sizeof(uint64_t);
	struct epoll_event ev;
	uint64_t v = (uint64_t)fd;
	int one = 1, err;

	if (!rb__worker_admit(w, fd))
		return; /* --max-conns: reset and counted */
	c = calloc(1, sizeof(*c));
	if (!c) {
		rb__worker_unadmit(w);
		rb__refuse(w, fd, -ENOMEM);
		return;
	}
	c->h.kind = RB_H_SOCK;
	c->fd = fd;
	rb__session_init_echo(&c->s, fd, tcp, NULL);
	rb_list_init(&c->link);
	rb__tune_accepted(w, fd, tcp);
	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c->cookie, &len) < 0) {
		err = -errno;
		goto refuse;
	}
	/* The record first: the program finds it for the first byte. */
	err = bpf_map_update_elem(sm->conns_fd, &c->cookie, &rec, BPF_NOEXIST);
	if (err < 0)
		goto refuse;
	err = bpf_map_update_elem(sm->socks_fd, &c->cookie, &v, BPF_NOEXIST);
	if (err == 0) {
		c->flags = SC_MAPPED;
		/* Bytes that came before it joined: verdicts for all of them now. */
		setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
		ev = (struct epoll_event){.events = EPOLLRDHUP | EPOLLET, .data.ptr = c};
	} else if (err == -EOPNOTSUPP) {
		/* Not ESTABLISHED any more: the peer already sent its FIN. */
		bpf_map_delete_elem(sm->conns_fd, &c->cookie);
		c->flags = SC_USER | SC_CAN_READ | SC_CAN_WRITE;
		ev = (struct epoll_event){.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		                          .data.ptr = c};
	} else {
		/* The sockhash is full (E2BIG) or the kernel out of memory. */
		bpf_map_delete_elem(sm->conns_fd, &c->cookie);
		goto refuse;
	}
	if (epoll_ctl(sm->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		err = -errno;
		if (c->flags & SC_MAPPED)
			bpf_map_delete_elem(sm->conns_fd, &c->cookie);
		goto refuse;
	}
	rb_list_init(&c->all);
	rb_list_add_tail(&sm->conns, &c->all);
	if (!rb__timer_armed(&sm->publish_timer))
		rb__timer_arm(&w->timers, &sm->publish_timer,
		              rb__now_us() + rb__ms_to_us(PUBLISH_MS));
	RB_STAT_ADD(w, accepted, 1);
	RB_STAT_ADD(w, active, 1);
	rb__session_opened(w, &c->s);
	if (c->flags & SC_USER)
		user_run(w, c);
	else if (w->stopping)
		mapped_progress(w, c);
	return;
refuse:
	free(c);
	rb__worker_unadmit(w);
	rb__refuse(w, fd, err);
}

static struct sm_conn *find_cookie(struct rb_worker *w, uint64_t cookie)
{
	struct sm_worker *sm = sm_of(w);

	for (struct rb_list *it = sm->conns.next; it != &sm->conns; it = it->next) {
		struct sm_conn *c = rb_container_of(it, struct sm_conn, all);
		if ((c->flags & SC_MAPPED) && c->cookie == cookie)
			return c;
	}
	return NULL;
}

/* Its unsent echo passed the cap: the program drops its input now; reset it. */
static void overflowed(struct rb_worker *w, struct sm_conn *c)
{
	struct sm_worker *sm = sm_of(w);
	unsigned sup;

	if (rb__ratelimit_ok(&sm->rl_overflow, &sup))
		rb__log(RB_LOG_NOTICE,
		        "fd %d: more than %zu bytes of echo unsent (the peer is not reading): "
		        "reset (%u more suppressed)",
		        c->fd, w->srv->cfg.conn_buffer, sup);
	conn_reset(w, c);
}

static int ring_event(void *ctx, void *data, size_t size)
{
	struct rb_worker *w = ctx;
	const struct rb_sm_event *e = data;
	struct sm_conn *c;

	if (size < sizeof(*e))
		return 0;
	c = find_cookie(w, e->cookie);
	if (c)
		overflowed(w, c);
	return 0;
}

static void scan_overflows(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);
	struct rb_list *it, *next;

	for (it = sm->conns.next; it != &sm->conns; it = next) {
		struct sm_conn *c = rb_container_of(it, struct sm_conn, all);
		struct rb_sm_conn rec;

		next = it->next;
		if ((c->flags & SC_MAPPED) &&
		    bpf_map_lookup_elem(sm->conns_fd, &c->cookie, &rec) == 0 &&
		    (rec.flags & RB_SM_OVERFLOW))
			overflowed(w, c);
	}
}

/* ---- listeners, stop ---- */

static void listener_accept(struct rb_worker *w, struct rb_listener *l)
{
	unsigned budget = w->srv->cfg.accept_budget;

	for (unsigned i = 0; i < budget; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			conn_new(w, fd, l->tcp);
			continue;
		}
		switch (rb__accept_error(w, l->fd, errno)) {
		case RB_ACCEPT_RETRY:
			continue;
		case RB_ACCEPT_IDLE:
			return;
		case RB_ACCEPT_BACKOFF:
			/* Level-triggered: out of epoll until the timer puts it back. */
			epoll_ctl(sm_of(w)->epfd, EPOLL_CTL_DEL, l->fd, NULL);
			rb__timer_arm(&w->timers, &l->retry,
			              rb__now_us() + rb__ms_to_us(RB_ACCEPT_BACKOFF_MS));
			return;
		}
	}
	/* Budget used up: the listener is level-triggered, it comes back. */
}

static void listener_retry(struct rb_timer *t, void *arg)
{
	struct rb_listener *l = rb_container_of(t, struct rb_listener, retry);
	struct rb_worker *w = arg;
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};

	if (!l->active)
		return;
	epoll_ctl(sm_of(w)->epfd, EPOLL_CTL_ADD, l->fd, &ev);
	listener_accept(w, l);
}

static void stop_deadline(struct rb_timer *t, void *arg)
{
	struct rb_worker *w = arg;
	struct sm_worker *sm = sm_of(w);

	(void)t;
	while (!rb_list_empty(&sm->conns)) {
		struct sm_conn *c = rb_container_of(sm->conns.next, struct sm_conn, all);
		uint64_t pending = CHAIN(c)->bytes;

		if (c->flags & SC_MAPPED)
			mapped_settled(w, c, &pending);
		rb__stop_deadline_close(w, c->fd, pending);
		conn_close(w, c, RB_CLOSE_SHUTDOWN);
	}
}

static void listener_unwatch(struct rb_worker *w, struct rb_listener *l)
{
	epoll_ctl(sm_of(w)->epfd, EPOLL_CTL_DEL, l->fd, NULL);
}

static void begin_stop(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);
	struct rb_list *it, *next;

	if (!rb__worker_begin_stop(w, stop_deadline))
		return;
	rb__worker_listeners_off(w, listener_unwatch);
	/* From now on the program discards input; each connection sends its
	 * FIN once its echo has left, then waits for the peer's. */
	__atomic_store_n(&sm->skel->bss->stopping, 1, __ATOMIC_RELEASE);
	for (it = sm->conns.next; it != &sm->conns; it = next) {
		struct sm_conn *c = rb_container_of(it, struct sm_conn, all);
		next = it->next;
		if (c->flags & SC_USER) {
			c->flags |= SC_CAN_READ | SC_CAN_WRITE;
			user_run(w, c);
		} else {
			mapped_progress(w, c);
		}
	}
}

/* ---- the model ---- */

static int sm_run(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);
	struct epoll_event ev[EVENT_BATCH];

	for (;;) {
		if (__atomic_load_n(&w->srv->stop_requested, __ATOMIC_RELAXED))
			begin_stop(w);
		if (w->stopping && rb_list_empty(&sm->conns))
			break;
		int64_t timeout =
		        w->timers.root ? rb__timers_timeout(&w->timers, rb__now_us()) : -1;
		if (timeout != 0)
			rb_pool_trim(&w->pool);
		int n = rb__epoll_wait_us(sm->epfd, ev, EVENT_BATCH, timeout, &sm->no_pwait2);
		if (n < 0) {
			if (n == -EINTR)
				continue;
			rb__log(RB_LOG_ERR, "epoll_wait: %s", strerror(-n));
			return n;
		}
		w->now_us = rb__now_us();
		RB_STAT_ADD(w, wakeups, 1);
		/* Accepts and hang-ups: the worker never moves echo bytes itself
		 * (but on the user path), so no event of its counts as idle. */
		RB_STAT_ADD(w, events, (uint64_t)n);
		for (int i = 0; i < n; i++) {
			struct rb_handle *h = ev[i].data.ptr;
			if (h == &sm->ring_h) {
				ring_buffer__consume(sm->ring);
				continue;
			}
			switch (h->kind) {
			case RB_H_SOCK:
				conn_event(w, (struct sm_conn *)(void *)h, ev[i].events);
				break;
			case RB_H_LISTENER: {
				struct rb_listener *l = (struct rb_listener *)(void *)h;
				if (l->active)
					listener_accept(w, l);
				break;
			}
			case RB_H_CONTROL:
				if (rb__worker_control(w))
					begin_stop(w);
				break;
			}
		}
		if (w->timers.root)
			rb__timers_run(&w->timers, rb__now_us(), w);
		sm_publish(w);
		__atomic_store_n(&w->st.chunks_allocated, w->pool.allocated, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_cached, (uint64_t)w->pool.n_free, __ATOMIC_RELAXED);
		__atomic_store_n(&w->st.chunks_live, w->pool.live, __ATOMIC_RELAXED);
		bury(w);
	}
	sm_publish(w);
	bury(w);
	return 0;
}

/* Sockhash slots: as many as this process may have descriptors, bounded. */
static uint32_t slots_for_nofile(void)
{
	struct rlimit rl;
	rlim_t n = SLOTS_MIN;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		n = rl.rlim_cur;
	if (n < SLOTS_MIN)
		n = SLOTS_MIN;
	if (n > SLOTS_MAX)
		n = SLOTS_MAX;
	return (uint32_t)n;
}

static int sm_worker_init(struct rb_worker *w)
{
	struct epoll_event ev;
	struct sm_worker *sm;
	int err;

	libbpf_setup();
	sm = calloc(1, sizeof(*sm));
	if (!sm)
		return -ENOMEM;
	w->model = sm;
	sm->epfd = -1;
	rb_list_init(&sm->conns);
	sm->drain_ms = 1;
	rb_list_init(&sm->draining);
	rb_list_init(&sm->grave);
	rb__timer_init(&sm->drain_timer, drain_timer_fire);
	rb__timer_init(&sm->publish_timer, publish_timer_fire);
	err = libbpf_num_possible_cpus();
	if (err < 0)
		return err;
	sm->ncpu = (unsigned)err;
	sm->cpu = calloc(sm->ncpu, sizeof(*sm->cpu));
	if (!sm->cpu)
		return -ENOMEM;
	/* One program and its maps per worker: its connections, its counters. */
	sm->skel = sockmap_echo__open();
	if (!sm->skel)
		return -errno;
	sm->slots = slots_for_nofile();
	bpf_map__set_max_entries(sm->skel->maps.socks, sm->slots);
	bpf_map__set_max_entries(sm->skel->maps.conns, sm->slots);
	sm->skel->rodata->cap = w->srv->cfg.conn_buffer;
	err = sockmap_echo__load(sm->skel);
	if (err < 0)
		return err;
	sm->socks_fd = bpf_map__fd(sm->skel->maps.socks);
	sm->conns_fd = bpf_map__fd(sm->skel->maps.conns);
	sm->stats_fd = bpf_map__fd(sm->skel->maps.stats);
	err = bpf_prog_attach(bpf_program__fd(sm->skel->progs.rb_sm_verdict), sm->socks_fd,
	                      BPF_SK_SKB_STREAM_VERDICT, 0);
	if (err < 0)
		return err;
	sm->ring = ring_buffer__new(bpf_map__fd(sm->skel->maps.events), ring_event, w, NULL);
	if (!sm->ring)
		return -errno;
	sm->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (sm->epfd < 0)
		return -errno;
	sm->ring_h.kind = RB_H_CONTROL;
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &sm->ring_h};
	if (epoll_ctl(sm->epfd, EPOLL_CTL_ADD, bpf_map__fd(sm->skel->maps.events), &ev) < 0)
		return -errno;
	sm->ctl_h.kind = RB_H_CONTROL;
	ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &sm->ctl_h};
	if (epoll_ctl(sm->epfd, EPOLL_CTL_ADD, w->ctl_fd, &ev) < 0)
		return -errno;
	for (size_t i = 0; i < w->n_listeners; i++) {
		struct rb_listener *l = &w->listeners[i];
		/* The server refuses UDP and UNIX listeners for this engine. */
		rb__timer_init(&l->retry, listener_retry);
		ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = l};
		if (epoll_ctl(sm->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0)
			return -errno;
		l->active = true;
	}
	snprintf(sm->detail, sizeof(sm->detail), "in-kernel echo, %u sockhash slots, cap %zu",
	         sm->slots, w->srv->cfg.conn_buffer);
	return 0;
}

static void sm_worker_fini(struct rb_worker *w)
{
	struct sm_worker *sm = sm_of(w);

	if (!sm)
		return;
	while (!rb_list_empty(&sm->conns))
		conn_close(w, rb_container_of(sm->conns.next, struct sm_conn, all),
		           RB_CLOSE_SHUTDOWN);
	if (sm->skel)
		sm_publish(w);
	bury(w);
	ring_buffer__free(sm->ring);
	/* Detaches the program: its maps go with their last descriptor. */
	sockmap_echo__destroy(sm->skel);
	if (sm->epfd >= 0)
		close(sm->epfd);
	free(sm->cpu);
	free(sm);
	w->model = NULL;
}

static const char *sm_detail(const struct rb_worker *w)
{
	const struct sm_worker *sm = sm_of(w);

	return sm ? sm->detail : "";
}

const struct rb_model_ops rb__sockmap_model = {
        .worker_init = sm_worker_init,
        .run = sm_run,
        .worker_fini = sm_worker_fini,
        .detail = sm_detail,
};
