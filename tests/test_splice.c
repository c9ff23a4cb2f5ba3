/* SPDX-License-Identifier: MIT */
/*
 * --copy splice specifics (the whole echo suite also runs in splice mode on
 * every readiness engine, see helpers.c): a 256 MiB stream, the pipe cache,
 * and descriptor exhaustion falling back to writev.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

static const struct engine_param splice_edge = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE};

static bool closed_n(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg && st->active == 0;
}

Test(splice, stream_256mib_and_pipe_reuse, .timeout = 300)
{
	const size_t len = 256u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;

	cr_assert_not_null(data);
	th_fill(data, len, 256);
	th_server_start(&ts, &splice_edge, NULL);
	struct th_stream s = {.fd = th_connect(ts.port),
	                      .data = data,
	                      .len = len,
	                      .rng = 9,
	                      .max_piece = 1u << 20};
	th_run_streams(&s, 1);
	close(s.fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, "the stream to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.bytes_spliced, len, "spliced %lu of %zu bytes",
	             (unsigned long)st.bytes_spliced, len);
	cr_assert_eq(st.chunks_allocated, 0, "splice mode used pool chunks");
	cr_assert_eq(st.splice_fallbacks, 0);
	/* The pipe goes back to the cache whenever it drains and is taken again
	 * for the next bytes: one pipe served the whole stream. */
	cr_assert_gt(st.pipe_cache_hits, 0);
	uint64_t hits = st.pipe_cache_hits;

	/* ... and the next peer. */
	struct th_stream s2 = {.fd = th_connect(ts.port), .data = data, .len = 100000, .rng = 3};
	th_run_streams(&s2, 1);
	close(s2.fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){2}, "the second stream to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_gt(st.pipe_cache_hits, hits);
	cr_assert_eq(st.bytes_spliced, len + 100000);
	th_server_stop(&ts);
	free(data);
}

/* Idle connections hold no pipe: 300 of them need no descriptors beyond their own. */
Test(splice, idle_connections_hold_no_pipe, .timeout = 60)
{
	enum { N = 300 };
	struct test_server ts;
	int fds[N], before, after;

	th_server_start(&ts, &splice_edge, NULL);
	before = dup(0);
	close(before);
	for (int i = 0; i < N; i++) {
		fds[i] = th_connect(ts.port);
		char b = (char)i;
		cr_assert_eq(send(fds[i], &b, 1, 0), 1);
		cr_assert_eq(recv(fds[i], &b, 1, 0), 1);
		cr_assert_eq(b, (char)i);
	}
	after = dup(0);
	close(after);
	/* Each connection: the client's socket and the server's; the cached pipe
	 * that served them all is two more. */
	cr_assert_eq(after - before, 2 * N + 2, "%d descriptors for %d idle connections",
	             after - before, N);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	th_server_stop(&ts);
}

static bool paused(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->pauses > 0;
}

/*
 * When descriptors run out, a connection that needs a pipe is echoed with
 * writev instead (and counted) rather than refused or stalled.
 */
Test(splice, descriptor_exhaustion_falls_back_to_writev, .timeout = 60)
{
	const size_t len = 8u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	struct rlimit rl;
	size_t sent;
	int base, a, b;

	th_fill(data, len, 4);
	th_server_start(&ts, &splice_edge, NULL);
	/* Two clients and their server sockets, plus one pipe: no second pipe. */
	a = th_connect_bufs(ts.port, 4096, 0);
	b = th_connect(ts.port);
	base = dup(0);
	close(base);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = (rlim_t)base + 4; /* the server's two sockets and one pipe */
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	/* Client a fills its pipe and stops reading: the pipe stays taken. */
	th_set_nonblock(a);
	sent = th_send_until(&ts, a, data, len, paused, NULL, "client a's pipe to fill");
	/* Client b needs a pipe now and cannot have one: it is echoed anyway. */
	struct th_stream s = {.fd = b, .data = data, .len = 1u << 20, .rng = 1};
	th_run_streams(&s, 1);
	rb_server_stats(ts.srv, &st);
	cr_assert_geq(st.splice_fallbacks, 1, "fallbacks %lu", (unsigned long)st.splice_fallbacks);
	cr_assert_eq(st.refused, 0);
	/* Client a reads everything back, intact. */
	th_send_rest_and_verify(a, data, len, sent);
	close(a);
	close(b);
	th_wait_stats(&ts, closed_n, &(uint64_t){2}, "both connections to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.bytes_out, len + (1u << 20));
	cr_assert_gt(st.chunks_allocated, 0, "no byte went through the pool");
	th_server_stop(&ts);
	free(data);
}
