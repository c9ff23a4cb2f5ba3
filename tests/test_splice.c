/* SPDX-License-Identifier: MIT */
/*
 * --copy splice specifics (the whole echo suite also runs in splice mode on
 * every readiness engine, see helpers.c): a 256 MiB stream, the pipe cache,
 * and descriptor exhaustion falling back to writev.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

static const struct engine_param splice_edge = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE,
						RB_COPY_SPLICE};

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
	struct th_stream s = {.fd = th_connect(ts.port), .data = data, .len = len, .rng = 9,
			      .max_piece = 1u << 20};
	th_run_streams(&s, 1);
	close(s.fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, "the stream to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.bytes_spliced, len, "spliced %lu of %zu bytes",
		     (unsigned long)st.bytes_spliced, len);
	cr_assert_eq(st.chunks_allocated, 0, "splice mode used pool chunks");
	cr_assert_eq(st.splice_fallbacks, 0);
	cr_assert_eq(st.pipe_cache_hits, 0);

	/* The emptied pipe went back to the cache and serves the next peer. */
	struct th_stream s2 = {.fd = th_connect(ts.port), .data = data, .len = 100000, .rng = 3};
	th_run_streams(&s2, 1);
	close(s2.fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){2}, "the second stream to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.pipe_cache_hits, 1);
	cr_assert_eq(st.bytes_spliced, len + 100000);
	th_server_stop(&ts);
	free(data);
}

/* When descriptors run out, a splice connection is echoed with writev instead. */
Test(splice, descriptor_exhaustion_falls_back_to_writev, .timeout = 60)
{
	const size_t len = 3u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	struct rlimit rl;
	struct th_stream s[2];
	int base;

	th_fill(data, len, 4);
	th_server_start(&ts, &splice_edge, NULL);
	/* Room for exactly: client 1, its server socket and pipe (4), client 2
	 * and its server socket (2); client 2's pipe cannot be had. */
	base = dup(0);
	close(base);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	rl.rlim_cur = (rlim_t)base + 6;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	for (int i = 0; i < 2; i++) {
		s[i] = (struct th_stream){.fd = th_connect(ts.port), .data = data + i,
					  .len = len - (size_t)i, .rng = (uint64_t)i};
		/* A round trip makes sure the server has accepted it before the next. */
		char b = 'x';
		cr_assert_eq(send(s[i].fd, &b, 1, 0), 1);
		cr_assert_eq(recv(s[i].fd, &b, 1, 0), 1);
	}
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.splice_fallbacks, 1, "fallbacks %lu", (unsigned long)st.splice_fallbacks);
	cr_assert_eq(st.refused, 0);
	th_run_streams(s, 2);
	for (int i = 0; i < 2; i++)
		close(s[i].fd);
	th_wait_stats(&ts, closed_n, &(uint64_t){2}, "both streams to close");
	rb_server_stats(ts.srv, &st);
	/* One connection spliced its bytes, the other went through the pool. */
	cr_assert_eq(st.bytes_spliced, 1 + len);
	cr_assert_eq(st.bytes_out, 2 + 2 * len - 1);
	cr_assert_gt(st.chunks_allocated, 0);
	th_server_stop(&ts);
	free(data);
}
