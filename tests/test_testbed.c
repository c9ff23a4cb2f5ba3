/* SPDX-License-Identifier: MIT */
/*
 * The test-bed daemon (issue 12): --max-conns, --idle-timeout,
 * --write-timeout, the close reasons, the connection log, --log-format
 * json, --stats-interval, --reuseport, --cpus and --busy-poll.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "rb_config.h"

/* ---- a log sink that keeps the lines, and waits for them ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static char lines[64][2048];
static unsigned n_lines;

static void keep_line(void *ctx, enum rb_log_level level, const char *msg)
{
	(void)ctx;
	(void)level;
	pthread_mutex_lock(&lock);
	if (n_lines < 64)
		snprintf(lines[n_lines++], sizeof(lines[0]), "%s", msg);
	pthread_cond_broadcast(&more);
	pthread_mutex_unlock(&lock);
}

/* The first line (from index *from on) that starts with prefix, waiting
 * for it up to 10 s; *from moves past it. */
static const char *wait_line(unsigned *from, const char *prefix)
{
	struct timespec until;
	const char *found = NULL;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 10;
	pthread_mutex_lock(&lock);
	while (!found) {
		for (; *from < n_lines && !found; (*from)++)
			if (strncmp(lines[*from], prefix, strlen(prefix)) == 0)
				found = lines[*from];
		if (!found && pthread_cond_timedwait(&more, &lock, &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&lock);
	cr_assert_not_null(found, "no log line starting with '%s'", prefix);
	return found;
}

/* What the tests tweak before a server starts. */
static struct rb_config want;

static void tweak(struct rb_config *cfg)
{
	cfg->max_conns = want.max_conns;
	cfg->forward = want.forward;
	cfg->idle_timeout_ms = want.idle_timeout_ms;
	cfg->write_timeout_ms = want.write_timeout_ms;
	cfg->log_connections = want.log_connections;
	cfg->log_json = want.log_json;
	cfg->stats_interval_ms = want.stats_interval_ms;
	cfg->reuseport = want.reuseport;
	cfg->busy_poll_us = want.busy_poll_us;
	cfg->shutdown_timeout_ms = want.shutdown_timeout_ms ? want.shutdown_timeout_ms : 2000;
	if (want.threads)
		cfg->threads = want.threads;
	cfg->n_cpus = want.n_cpus;
	memcpy(cfg->cpus, want.cpus, sizeof(cfg->cpus));
	cfg->log_level = RB_LOG_INFO;
	cfg->log_fn = keep_line;
}

static void echo_once(int fd)
{
	char b[5];

	cr_assert_eq(send(fd, "hello", 5, MSG_NOSIGNAL), 5);
	for (size_t got = 0; got < 5;) {
		ssize_t r = recv(fd, b + got, 5 - got, 0);
		cr_assert_gt(r, 0);
		got += (size_t)r;
	}
	cr_assert_eq(memcmp(b, "hello", 5), 0);
}

static uint64_t ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool closed_n(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg && st->active == 0;
}

static bool closed_only(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg;
}

#define ENGINE_TEST(name, secs)                                                                    \
	ParameterizedTestParameters(testbed, name)                                                 \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = th_engine_params(&p);                                                   \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, testbed, name, .timeout = (secs))

/* The timeouts on each model: edge-triggered epoll and a level-triggered
 * poller (the reactor), and io_uring with its features on and all off. */
static size_t timeout_params(struct engine_param **out)
{
	static const struct engine_param p[] = {
		{RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_WRITEV, 0},
		{RB_ENGINE_POLL, RB_TRIGGER_LEVEL, RB_COPY_WRITEV, 0},
#if RB_HAVE_URING
		{RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV, 0},
		{RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV,
		 RB_URING_BUNDLE | RB_URING_INC | RB_URING_BATCH},
#endif
	};
	struct engine_param *all = cr_malloc(sizeof(p));

	memcpy(all, p, sizeof(p));
	*out = all;
	return sizeof(p) / sizeof(p[0]);
}

#define TIMEOUT_TEST(name, secs)                                                                   \
	ParameterizedTestParameters(testbed, name)                                                 \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = timeout_params(&p);                                                     \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, testbed, name, .timeout = (secs))

/* Exactly the peer after the Nth is refused, with an RST; a freed slot is
 * taken again. Every engine. */
ENGINE_TEST(max_conns_refuses_exactly_the_next, 60)
{
	struct test_server ts;
	struct rb_stats st;
	int fd[4];
	char b;

	want = (struct rb_config){.max_conns = 3};
	th_server_start(&ts, p, tweak);
	for (int i = 0; i < 3; i++) {
		fd[i] = th_connect(ts.port);
		echo_once(fd[i]);
	}
	fd[3] = th_connect(ts.port);
	cr_assert_eq(recv(fd[3], &b, 1, 0), -1);
	cr_assert_eq(errno, ECONNRESET, "the 4th peer: %s", strerror(errno));
	close(fd[3]);
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.refused_limit, 1);
	cr_assert_eq(st.refused, 1);
	cr_assert_eq(st.active, 3);
	close(fd[0]);
	th_wait_stats(&ts, closed_only, &(uint64_t){1}, "one session to close");
	fd[0] = th_connect(ts.port);
	echo_once(fd[0]);
	for (int i = 0; i < 3; i++)
		close(fd[i]);
	th_wait_stats(&ts, closed_n, &(uint64_t){4}, "every session to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.refused_limit, 1);
	cr_assert_eq(st.closed_eof, 4);
	th_server_stop(&ts);
}

/* One session on port, idle after one echo: it must end with a clean EOF
 * after about the 300 ms idle timeout, not before and not much later. */
static void expect_idle_fin(int port)
{
	uint64_t t0, dt;
	int fd = th_connect(port);
	char b;

	echo_once(fd);
	t0 = ms_now();
	cr_assert_eq(recv(fd, &b, 1, 0), 0, "not a clean EOF: %s", strerror(errno));
	dt = ms_now() - t0;
	cr_assert_geq(dt, 250, "closed after %" PRIu64 " ms, before the 300 ms timeout", dt);
	cr_assert_lt(dt, 3000, "closed only after %" PRIu64 " ms", dt);
	close(fd);
}

/* A session idle for the timeout gets a FIN (EOF, not an RST), on time. */
TIMEOUT_TEST(idle_timeout_closes_with_a_fin, 60)
{
	struct test_server ts;
	struct rb_stats st;

	want = (struct rb_config){.idle_timeout_ms = 300};
	th_server_start(&ts, p, tweak);
	expect_idle_fin(ts.port);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, "the session to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.closed_idle, 1);
	cr_assert_eq(st.resets, 0);
	th_server_stop(&ts);
}

/* A relay session too: the client and the upstream each get a FIN. */
TIMEOUT_TEST(relay_idle_timeout_closes_both_sides, 60)
{
	struct test_server up, ts;
	struct rb_stats st;
	char fwd[64];

	th_server_start(&up, NULL, NULL);
	snprintf(fwd, sizeof(fwd), "tcp://127.0.0.1:%d", up.port);
	want = (struct rb_config){.idle_timeout_ms = 300, .forward = fwd};
	th_server_start(&ts, p, tweak);
	expect_idle_fin(ts.port);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, "the relay session to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.closed_idle, 1,
	             "engine %d: closed_idle %" PRIu64 ", eof %" PRIu64 ", error %" PRIu64,
	             p->engine, st.closed_idle, st.closed_eof, st.closed_error);
	cr_assert_eq(st.resets, 0);
	/* The upstream heard the relay's FIN: its session ended cleanly. */
	th_wait_stats(&up, closed_n, &(uint64_t){1}, "the upstream's session to close");
	rb_server_stats(up.srv, &st);
	cr_assert_eq(st.closed_eof, 1);
	th_server_stop(&ts);
	th_server_stop(&up);
}

static bool paused(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->pauses > 0;
}

static bool write_timed_out(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->closed_write_timeout == 1 && st->active == 0;
}

/* A peer that stops reading is reset once its output is stuck for the
 * write timeout (an idle timeout alone would never fire: it keeps sending). */
TIMEOUT_TEST(write_timeout_resets_a_stuck_reader, 60)
{
	const size_t len = 16u << 20;
	unsigned char *data = malloc(len), buf[65536];
	struct test_server ts;
	struct rb_stats st;
	ssize_t r;
	int fd;

	th_fill(data, len, 31);
	want = (struct rb_config){.write_timeout_ms = 300};
	th_server_start(&ts, p, tweak);
	fd = th_connect_bufs(ts.port, 65536, 65536);
	th_set_nonblock(fd);
	th_send_until(&ts, fd, data, len, paused, NULL, "the server to stop reading");
	th_wait_stats(&ts, write_timed_out, NULL, "the write timeout");
	/* The RST throws away what was queued for us: reading ends in an error. */
	for (;;) {
		r = recv(fd, buf, sizeof(buf), 0);
		if (r > 0 || (r < 0 && errno == EAGAIN))
			continue;
		break;
	}
	cr_assert_eq(r, -1, "the stream ended cleanly (%zd), not with an RST", r);
	cr_assert_eq(errno, ECONNRESET);
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.closed_write_timeout, 1);
	cr_assert_eq(st.closed_idle, 0);
	close(fd);
	th_server_stop(&ts);
	free(data);
}

/* Each way a session ends is counted under its own reason. */
TIMEOUT_TEST(close_reasons_are_counted, 60)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	const size_t len = 16u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	int fd;

	th_fill(data, len, 32);
	want = (struct rb_config){.shutdown_timeout_ms = 300};
	th_server_start(&ts, p, tweak);
	/* eof */
	fd = th_connect(ts.port);
	echo_once(fd);
	close(fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, "the first session to close");
	/* reset */
	fd = th_connect(ts.port);
	echo_once(fd);
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){2}, "the reset session to close");
	/* shutdown: a peer that never reads, cut at the stop deadline */
	fd = th_connect_bufs(ts.port, 65536, 65536);
	th_set_nonblock(fd);
	th_send_until(&ts, fd, data, len, paused, NULL, "the server to stop reading");
	rb_server_stop(ts.srv);
	pthread_join(ts.thread, NULL);
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.closed_eof, 1);
	cr_assert_eq(st.closed_error, 1);
	cr_assert_eq(st.resets, 1);
	cr_assert_eq(st.closed_shutdown, 1);
	cr_assert_eq(st.closed, 3);
	cr_assert_eq(st.duration_under_1ms + st.duration_under_10ms + st.duration_under_100ms +
	                     st.duration_under_1s + st.duration_under_10s + st.duration_under_100s +
	                     st.duration_over_100s,
	             3);
	cr_assert_eq(st.session_bytes_under_1k, 2, "two sessions of 10 bytes");
	rb_server_destroy(ts.srv);
	close(fd);
	free(data);
}

/* The connection log: exact fields for a known session, text and JSON. */
Test(testbed, connection_log_fields, .timeout = 60)
{
	struct sockaddr_in me;
	socklen_t len = sizeof(me);
	struct test_server ts;
	char want_open[256], want_close[256];
	unsigned from = 0, us;
	const char *line;
	int fd;

	want = (struct rb_config){.log_connections = true};
	th_server_start(&ts, NULL, tweak);
	fd = th_connect(ts.port);
	getsockname(fd, (struct sockaddr *)&me, &len);
	echo_once(fd);
	close(fd);
	snprintf(want_open, sizeof(want_open),
	         "session 0.1 open: peer 127.0.0.1:%u, local 127.0.0.1:%d, engine epoll",
	         ntohs(me.sin_port), ts.port);
	line = wait_line(&from, "session 0.1 open:");
	cr_assert_str_eq(line, want_open);
	snprintf(want_close, sizeof(want_close),
	         "session 0.1 close: peer 127.0.0.1:%u, local 127.0.0.1:%d, engine epoll, 5 bytes "
	         "in, 5 bytes out, ",
	         ntohs(me.sin_port), ts.port);
	line = wait_line(&from, "session 0.1 close:");
	cr_assert_eq(strncmp(line, want_close, strlen(want_close)), 0, "%s", line);
	cr_assert_eq(sscanf(line + strlen(want_close), "0.%6u s, eof", &us), 1, "%s", line);
	th_server_stop(&ts);
}

Test(testbed, connection_log_json, .timeout = 60)
{
	struct sockaddr_in me;
	socklen_t len = sizeof(me);
	struct test_server ts;
	char want_open[256], want_close[320];
	unsigned from = 0;
	const char *line;
	int fd;

	want = (struct rb_config){.log_connections = true, .log_json = true};
	th_server_start(&ts, NULL, tweak);
	fd = th_connect(ts.port);
	getsockname(fd, (struct sockaddr *)&me, &len);
	echo_once(fd);
	close(fd);
	snprintf(want_open, sizeof(want_open),
	         "{\"event\":\"open\",\"session\":\"0.1\",\"peer\":\"127.0.0.1:%u\",\"local\":"
	         "\"127.0.0.1:%d\",\"engine\":\"epoll\"}",
	         ntohs(me.sin_port), ts.port);
	line = wait_line(&from, "{\"event\":\"open\"");
	cr_assert_str_eq(line, want_open);
	snprintf(want_close, sizeof(want_close),
	         "{\"event\":\"close\",\"session\":\"0.1\",\"peer\":\"127.0.0.1:%u\",\"local\":"
	         "\"127.0.0.1:%d\",\"engine\":\"epoll\",\"bytes_in\":5,\"bytes_out\":5,"
	         "\"duration_s\":",
	         ntohs(me.sin_port), ts.port);
	line = wait_line(&from, "{\"event\":\"close\"");
	cr_assert_eq(strncmp(line, want_close, strlen(want_close)), 0, "%s", line);
	cr_assert_not_null(strstr(line, ",\"reason\":\"eof\"}"), "%s", line);
	th_server_stop(&ts);
}

/* --stats-interval: lines keep coming, with the counters and the rates. */
Test(testbed, stats_interval_lines, .timeout = 60)
{
	struct test_server ts;
	unsigned from = 0;
	const char *line;
	int fd;

	want = (struct rb_config){.stats_interval_ms = 50};
	th_server_start(&ts, NULL, tweak);
	fd = th_connect(ts.port);
	echo_once(fd);
	close(fd);
	for (int i = 0; i < 3; i++) {
		line = wait_line(&from, "stats {\"accepted\":");
		cr_assert_not_null(
		        strstr(line, "\"accepted_per_worker\":[1]} rates {\"interval_ms\":"), "%s",
		        line);
		cr_assert_not_null(strstr(line, "\"bytes_in_per_s\":"), "%s", line);
	}
	th_server_stop(&ts);
}

/* Listening sockets on a TCP port, from /proc/net/tcp (state 0A). */
static int listeners_on(int port)
{
	char line[512], key[16];
	FILE *f = fopen("/proc/net/tcp", "r");
	int n = 0;

	snprintf(key, sizeof(key), ":%04X", port);
	while (f && fgets(line, sizeof(line), f)) {
		char local[64], remote[64], state[8];
		if (sscanf(line, "%*s %63s %63s %7s", local, remote, state) == 3 &&
		    strstr(local, key) && strcmp(state, "0A") == 0)
			n++;
	}
	if (f)
		fclose(f);
	return n;
}

Test(testbed, reuseport_one_socket_per_worker, .timeout = 60)
{
	struct test_server ts;

	want = (struct rb_config){.threads = 2, .reuseport = true};
	th_server_start(&ts, NULL, tweak);
	cr_assert_eq(listeners_on(ts.port), 2);
	th_server_stop(&ts);
	want = (struct rb_config){.threads = 2};
	th_server_start(&ts, NULL, tweak);
	cr_assert_eq(listeners_on(ts.port), 1);
	th_server_stop(&ts);
}

static bool two_workers_running(const struct rb_stats *st, void *arg)
{
	(void)st;
	(void)arg;
	return true;
}

/* --cpus 1,0: worker 0 on CPU 1, worker 1 on CPU 0, visible in /proc. */
Test(testbed, cpus_pin_each_worker, .timeout = 60)
{
	struct test_server ts;
	int on0 = 0, on1 = 0;
	DIR *d;
	struct dirent *e;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("needs 2 CPUs");
	want = (struct rb_config){.threads = 2, .n_cpus = 2, .cpus = {1, 0}};
	th_server_start(&ts, NULL, tweak);
	/* Both workers have answered a round trip: both are in their loops. */
	int fd = th_connect(ts.port);
	echo_once(fd);
	close(fd);
	th_wait_stats(&ts, two_workers_running, NULL, "");
	d = opendir("/proc/self/task");
	while ((e = readdir(d))) {
		char path[300], buf[4096], *p;
		FILE *f;
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/status", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		p = strstr(buf, "Cpus_allowed_list:");
		if (!p)
			continue;
		p += strlen("Cpus_allowed_list:");
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncmp(p, "0\n", 2) == 0)
			on0++;
		else if (strncmp(p, "1\n", 2) == 0)
			on1++;
	}
	closedir(d);
	cr_assert_eq(on0, 1, "%d threads only on CPU 0", on0);
	cr_assert_eq(on1, 1, "%d threads only on CPU 1", on1);
	th_server_stop(&ts);
}

/* --busy-poll: accepted sockets and epoll (Linux 6.9+) both, reported. */
Test(testbed, busy_poll_reported, .timeout = 60)
{
	struct test_server ts;
	unsigned from = 0;
	const char *line;

	want = (struct rb_config){.busy_poll_us = 50};
	th_server_start(&ts, NULL, tweak);
	line = wait_line(&from, "busy poll 50 us: sockets yes, epoll ");
	cr_assert(strcmp(line, "busy poll 50 us: sockets yes, epoll yes") == 0 ||
	                  strcmp(line,
	                         "busy poll 50 us: sockets yes, epoll no (kernel before 6.9?)") ==
	                          0,
	          "%s", line);
	int fd = th_connect(ts.port);
	echo_once(fd);
	close(fd);
	th_server_stop(&ts);
}

#if RB_HAVE_URING
/* Test hook in uring_probe.c: the errno NAPI registration reports. */
extern int rb__uring_test_napi_errno;

static const struct engine_param uring_param = {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV};

static void need_uring(void)
{
	char why[256] = "";

	if (rb_engine_available(RB_ENGINE_URING, why, sizeof(why)) < 0)
		cr_skip_test("io_uring cannot run on this machine: %s", why);
}

/* --busy-poll on uring: NAPI registered on the ring (Linux 6.9+), said at
 * start, and the echo is still exact. */
Test(testbed, busy_poll_uring_napi, .timeout = 60)
{
	static unsigned char data[100000], got[100000];
	struct test_server ts;
	unsigned from = 0;
	const char *line;
	size_t n = 0;
	int fd;

	need_uring();
	want = (struct rb_config){.busy_poll_us = 50};
	th_server_start(&ts, &uring_param, tweak);
	line = wait_line(&from, "busy poll 50 us: ");
	cr_assert_str_eq(line, "busy poll 50 us: sockets yes, uring napi yes");
	cr_assert_not_null(strstr(rb_server_engine_detail(ts.srv), ", napi busy poll 50 us"), "%s",
	                   rb_server_engine_detail(ts.srv));
	th_fill(data, sizeof(data), 31);
	fd = th_connect(ts.port);
	for (size_t sent = 0; sent < sizeof(data);) {
		ssize_t r = send(fd, data + sent, sizeof(data) - sent, MSG_NOSIGNAL);
		cr_assert_gt(r, 0);
		sent += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	for (ssize_t r; (r = recv(fd, got + n, sizeof(got) - n, 0)) > 0;)
		n += (size_t)r;
	cr_assert_eq(n, sizeof(data));
	cr_assert_eq(memcmp(got, data, n), 0);
	close(fd);
	th_server_stop(&ts);
}

static void napi_refused(int err, const char *want_err)
{
	struct rb_config cfg;
	struct rb_server *srv = NULL;
	char msg[256] = "";

	rb_config_init(&cfg);
	cfg.engine = RB_ENGINE_URING;
	cfg.listen[0] = "tcp://127.0.0.1:0";
	cfg.n_listen = 1;
	cfg.log_level = RB_LOG_ERR;
	cfg.busy_poll_us = 50;
	rb__uring_test_napi_errno = err;
	/* -ENOTSUP: the command line's exit 3, as for an engine that cannot run. */
	cr_assert_eq(rb_server_create(&cfg, &srv, msg, sizeof(msg)), -ENOTSUP);
	rb__uring_test_napi_errno = 0;
	cr_assert_null(srv);
	cr_assert_str_eq(msg, want_err);
}

/* A kernel that will not register NAPI (before 6.9: EINVAL), or a ring
 * not permitted to: refused at start, with the reason. */
Test(testbed, busy_poll_uring_napi_refused, .timeout = 30)
{
	need_uring();
	napi_refused(EINVAL, "--busy-poll 50: the uring engine cannot register NAPI busy polling: "
	                     "Invalid argument (IORING_REGISTER_NAPI needs Linux 6.9)");
	napi_refused(EPERM, "--busy-poll 50: the uring engine cannot register NAPI busy polling: "
	                    "Operation not permitted");
}
#endif
