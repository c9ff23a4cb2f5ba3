/* SPDX-License-Identifier: MIT */
#include "engines.h"
#include "helpers.h"
#include "rb_config.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* No progress for this long means the server stalled: fail, never hang. */
#define STALL_MS 20000
/* How long a stopped server may take to exit: well past the graceful
 * stop's deadline (2 s by default) and the zero-copy grace after it (1 s). */
#define STOP_S 60

static struct engine_param all_params[] = {
        {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_WRITEV},
        {RB_ENGINE_EPOLL, RB_TRIGGER_LEVEL, RB_COPY_WRITEV},
        {RB_ENGINE_POLL, RB_TRIGGER_LEVEL, RB_COPY_WRITEV},
        {RB_ENGINE_SELECT, RB_TRIGGER_LEVEL, RB_COPY_WRITEV},
#if RB_HAVE_URING
        /* Every io_uring feature on, then each off alone, then all off. */
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, 0},
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, RB_URING_BUNDLE},
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, RB_URING_INC},
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, RB_URING_BATCH},
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV,
         RB_URING_BUNDLE | RB_URING_INC | RB_URING_BATCH},
        /* Every feature on and every send zero-copy (from 1 byte). */
        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, 0, .send_zc = 1},
#endif
        /* Always listed: skipped, with the probe's reason, where it cannot run
         * (built without libbpf, or no CAP_BPF here). It cannot pause a sender:
         * past the cap of unsent echo it resets. The suite's streams write up to
         * 16 MiB before they read, so its cap is above that (test_sockmap.c
         * tests the reset). */
        {RB_ENGINE_SOCKMAP, RB_TRIGGER_EDGE, RB_COPY_WRITEV, 0, 32u << 20},
        {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE},
        {RB_ENGINE_EPOLL, RB_TRIGGER_LEVEL, RB_COPY_SPLICE},
        {RB_ENGINE_POLL, RB_TRIGGER_LEVEL, RB_COPY_SPLICE},
        {RB_ENGINE_SELECT, RB_TRIGGER_LEVEL, RB_COPY_SPLICE},
};

size_t th_engine_params(struct engine_param **out)
{
	size_t n = sizeof(all_params) / sizeof(all_params[0]);
	struct engine_param *p = cr_malloc(sizeof(all_params));

	memcpy(p, all_params, sizeof(all_params));
	*out = p;
	return n;
}

size_t th_udp_engine_params(struct engine_param **out)
{
	struct engine_param *all;
	size_t n = th_engine_params(&all), k = 0;

	for (size_t i = 0; i < n; i++) {
		if ((rb__engine_find(all[i].engine)->caps & RB_CAP_UDP) &&
		    all[i].copy == RB_COPY_WRITEV && all[i].uring_off == 0 && all[i].send_zc == 0)
			all[k++] = all[i];
	}
	/* epoll always serves UDP: none means this filter is wrong, and
	 * Criterion would run (and report) none of the tests it feeds. */
	if (k == 0) {
		fprintf(stderr, "th_udp_engine_params: no engine serves UDP\n");
		abort();
	}
	*out = all;
	return k;
}

void th_engine_param_describe(const struct engine_param *p, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s/%s%s%s%s%s", rb_engine_name(p->engine),
	         rb_trigger_name(p->trigger), rb_copy_name(p->copy),
	         p->uring_off & RB_URING_BUNDLE ? "/no-bundle" : "",
	         p->uring_off & RB_URING_INC ? "/no-inc" : "",
	         p->uring_off & RB_URING_BATCH ? "/no-batch" : "", p->send_zc ? "/send-zc" : "");
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *server_thread(void *arg)
{
	struct test_server *ts = arg;

	ts->run_result = rb_server_run(ts->srv);
	return NULL;
}

void th_server_create(struct test_server *ts, const struct engine_param *p,
                      void (*tweak)(struct rb_config *cfg))
{
	char err[256] = "";
	int rc;

	memset(ts, 0, sizeof(*ts));
	rb_config_init(&ts->cfg);
	ts->cfg.listen[0] = "tcp://127.0.0.1:0";
	ts->cfg.n_listen = 1;
	ts->cfg.log_level = RB_LOG_ERR;
	if (p) {
		char why[256] = "";
		/* An engine that cannot run here is skipped, saying why: never a pass. */
		if (rb_engine_available(p->engine, why, sizeof(why)) < 0)
			cr_skip_test("%s", why);
		ts->cfg.engine = p->engine;
		ts->cfg.trigger = p->trigger;
		ts->cfg.copy = p->copy;
		ts->cfg.uring_off = p->uring_off;
		if (p->conn_buffer)
			ts->cfg.conn_buffer = p->conn_buffer;
		/* Batching is opt-in: the suite runs with it where not off. */
		ts->cfg.uring_batch_us = p->uring_off & RB_URING_BATCH ? 0 : 50;
		ts->cfg.uring_send_zc = p->send_zc;
	}
	if (tweak)
		tweak(&ts->cfg);
	rc = rb_server_create(&ts->cfg, &ts->srv, err, sizeof(err));
	cr_assert_eq(rc, 0, "rb_server_create: %s", err);
	ts->port = rb_server_port(ts->srv, 0);
	cr_assert_gt(ts->port, 0);
}

void th_server_run(struct test_server *ts)
{
	int rc = pthread_create(&ts->thread, NULL, server_thread, ts);

	cr_assert_eq(rc, 0);
}

void th_server_start(struct test_server *ts, const struct engine_param *p,
                     void (*tweak)(struct rb_config *cfg))
{
	th_server_create(ts, p, tweak);
	th_server_run(ts);
}

void th_server_stop(struct test_server *ts)
{
	struct timespec until;

	rb_server_stop(ts->srv);
	/* A server that does not stop fails here, saying where it is, rather
	 * than hang until the test's own timeout says nothing. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += STOP_S;
	if (pthread_timedjoin_np(ts->thread, NULL, &until) != 0) {
		struct rb_stats st;
		char json[8192];
		rb_server_stats(ts->srv, &st);
		rb_stats_json(&st, json, sizeof(json));
		cr_assert_fail("the server did not stop in %d s; stats %s", STOP_S, json);
	}
	cr_assert_eq(ts->run_result, 0, "rb_server_run returned %d", ts->run_result);
	rb_server_destroy(ts->srv);
	ts->srv = NULL;
}

void th_wait_stats(struct test_server *ts, bool (*pred)(const struct rb_stats *, void *), void *arg,
                   const char *what)
{
	uint64_t deadline = now_ms() + STALL_MS;
	struct rb_stats st;

	for (;;) {
		rb_server_stats(ts->srv, &st);
		if (pred(&st, arg))
			return;
		if (now_ms() > deadline) {
			char json[8192];
			rb_stats_json(&st, json, sizeof(json));
			cr_assert_fail("timed out waiting for %s; stats %s", what, json);
		}
		/* Yield to the server thread; the condition is re-checked, never assumed. */
		poll(NULL, 0, 1);
	}
}

int th_connect(int port)
{
	return th_connect_bufs(port, 0, 0);
}

int th_connect_bufs(int port, int rcvbuf, int sndbuf)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	if (rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (sndbuf)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "connect: %s",
	             strerror(errno));
	return fd;
}

void th_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

uint64_t th_rand(uint64_t *s)
{
	/* splitmix64 */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void th_fill(unsigned char *buf, size_t len, uint64_t seed)
{
	uint64_t s = seed;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = th_rand(&s);
		size_t n = len - i < 8 ? len - i : 8;
		memcpy(buf + i, &v, n);
	}
}

#define RECV_SLACK 65536

static void stream_send(struct th_stream *s)
{
	while (s->sent < s->len) {
		size_t piece = 1 + th_rand(&s->rng) % s->max_piece;
		ssize_t r;
		if (piece > s->len - s->sent)
			piece = s->len - s->sent;
		r = send(s->fd, s->data + s->sent, piece, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r < 0) {
			cr_assert(errno == EAGAIN || errno == EINTR, "send: %s", strerror(errno));
			return;
		}
		s->sent += (size_t)r;
	}
}

static bool stream_recv(struct th_stream *s)
{
	bool progress = false;

	for (;;) {
		ssize_t r = recv(s->fd, s->got + s->recvd, s->len + RECV_SLACK - s->recvd,
		                 MSG_DONTWAIT);
		if (r < 0) {
			cr_assert(errno == EAGAIN || errno == EINTR, "recv: %s", strerror(errno));
			return progress;
		}
		if (r == 0) {
			s->eof = true;
			return true;
		}
		s->recvd += (size_t)r;
		cr_assert_leq(s->recvd, s->len, "server echoed %zu bytes of a %zu-byte stream",
		              s->recvd, s->len);
		progress = true;
	}
}

void th_run_streams(struct th_stream *s, size_t n)
{
	struct pollfd *pfd = calloc(n, sizeof(*pfd));
	uint64_t last_progress = now_ms();
	size_t done = 0;

	cr_assert_not_null(pfd);
	for (size_t i = 0; i < n; i++) {
		s[i].got = malloc(s[i].len + RECV_SLACK);
		cr_assert_not_null(s[i].got);
		s[i].sent = s[i].recvd = 0;
		s[i].shut = s[i].eof = false;
		if (!s[i].max_piece)
			s[i].max_piece = 65536;
		th_set_nonblock(s[i].fd);
	}
	while (done < n) {
		for (size_t i = 0; i < n; i++) {
			pfd[i].fd = s[i].eof ? -1 : s[i].fd;
			pfd[i].events = POLLIN | (s[i].sent < s[i].len ? POLLOUT : 0);
			pfd[i].revents = 0;
		}
		int r = poll(pfd, (nfds_t)n, 1000);
		cr_assert_geq(r, 0, "poll: %s", strerror(errno));
		for (size_t i = 0; i < n; i++) {
			struct th_stream *st = &s[i];
			size_t before = st->sent;
			if (st->eof)
				continue;
			if (pfd[i].revents & POLLOUT)
				stream_send(st);
			if (st->sent == st->len && !st->shut) {
				cr_assert_eq(shutdown(st->fd, SHUT_WR), 0);
				st->shut = true;
			}
			if (st->sent != before)
				last_progress = now_ms();
			if ((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) && stream_recv(st)) {
				last_progress = now_ms();
				if (st->eof) {
					cr_assert_eq(st->recvd, st->len,
					             "stream %zu: EOF after %zu of %zu bytes", i,
					             st->recvd, st->len);
					done++;
				}
			}
		}
		cr_assert_lt(now_ms() - last_progress, (uint64_t)STALL_MS,
		             "streams stalled: %zu of %zu done", done, n);
	}
	for (size_t i = 0; i < n; i++) {
		if (memcmp(s[i].got, s[i].data, s[i].len) != 0) {
			size_t off = 0;
			while (s[i].got[off] == s[i].data[off])
				off++;
			cr_assert_fail("stream %zu: byte %zu differs (got 0x%02x, sent 0x%02x)", i,
			               off, s[i].got[off], s[i].data[off]);
		}
		free(s[i].got);
		s[i].got = NULL;
	}
	free(pfd);
}

size_t th_send_until(struct test_server *ts, int fd, const unsigned char *data, size_t len,
                     bool (*pred)(const struct rb_stats *, void *), void *arg, const char *what)
{
	struct rb_stats st;
	size_t sent = 0;
	uint64_t last_progress = now_ms();

	for (;;) {
		ssize_t r = sent < len ? send(fd, data + sent, len - sent, MSG_NOSIGNAL) : -1;
		if (r > 0) {
			sent += (size_t)r;
			last_progress = now_ms();
			continue;
		}
		cr_assert(sent == len || errno == EAGAIN, "send: %s", strerror(errno));
		if (sent == len) {
			th_wait_stats(ts, pred, arg, what);
			return sent;
		}
		rb_server_stats(ts->srv, &st);
		if (pred(&st, arg))
			return sent;
		if (now_ms() - last_progress > STALL_MS) {
			/* Blocked, and the server is not where the test waits
			 * for it: say where it is rather than hang. */
			char json[8192];
			rb_stats_json(&st, json, sizeof(json));
			cr_assert_fail(
			        "no room to send for %d ms at %zu/%zu bytes, waiting for %s; "
			        "stats %s",
			        STALL_MS, sent, len, what, json);
		}
		/* Blocked for now: wait for room (or re-check the server shortly). */
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, 10);
	}
}

void th_send_rest_and_verify(int fd, const unsigned char *data, size_t len, size_t sent)
{
	unsigned char *got = malloc(len);
	size_t recvd = 0;

	cr_assert_not_null(got);
	while (recvd < len) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
		cr_assert_gt(poll(&pfd, 1, STALL_MS), 0, "stalled at %zu/%zu", recvd, len);
		if (pfd.revents & POLLOUT) {
			ssize_t r = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
			if (r > 0)
				sent += (size_t)r;
		}
		if (pfd.revents & POLLIN) {
			ssize_t r = recv(fd, got + recvd, len - recvd, 0);
			cr_assert_gt(r, 0, "recv: %s", r == 0 ? "EOF" : strerror(errno));
			recvd += (size_t)r;
		}
	}
	cr_assert(memcmp(got, data, len) == 0, "echoed bytes differ");
	free(got);
}

char **th_child_env(const char *const *extra)
{
	static char *env[256];
	static char asan[256];
	const char *opts = getenv("REBOUND_CHILD_ASAN_OPTIONS");
	size_t n = 0;

	for (char **e = environ; *e && n < 240; e++)
		if (strncmp(*e, "ASAN_OPTIONS=", 13) != 0)
			env[n++] = *e;
	if (opts) {
		snprintf(asan, sizeof(asan), "ASAN_OPTIONS=%s", opts);
		env[n++] = asan;
	}
	while (extra && *extra && n < 254)
		env[n++] = (char *)*extra++;
	env[n] = NULL;
	return env;
}

void th_slurp(int fd, char *buf, size_t len)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < len && (r = read(fd, buf + n, len - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	close(fd);
}
