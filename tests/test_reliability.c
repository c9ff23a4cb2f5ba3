/* SPDX-License-Identifier: MIT */
/*
 * Defects a hostile test found (issue 9), one test each, on every engine
 * configuration they apply to: the memory-cap livelock, hang-ups while a
 * connection waits for memory, and a new peer served while others hold
 * the whole cap.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#define REL_TEST(name, secs)                                                                       \
	ParameterizedTestParameters(reliability, name)                                             \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = th_engine_params(&p);                                                   \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, reliability, name, .timeout = (secs))

static bool all_closed(const struct rb_stats *st, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	return st->closed == want && st->active == 0;
}

static void tiny_memory(struct rb_config *cfg)
{
	cfg->chunk_size = 512;
	cfg->max_memory = 512;
	cfg->read_budget = 1;
	cfg->uring_buffers = 1;
}

/*
 * One chunk of memory for the whole worker, and a read budget of one byte and 32 clients pushing
 * bulk data: every connection waits for memory most of the time, and the read budget requeues them
 * too. Every stream must still come back byte-exact, and the stop must not hang.
 */
REL_TEST(memory_cap_one_chunk_many_pushers, 120)
{
	enum { N = 32 };
	const size_t len = 64u << 10;
	unsigned char *data = malloc(len + N);
	struct th_stream s[N];
	struct test_server ts;
	uint64_t want = N;

	th_fill(data, len + N, 9);
	th_server_start(&ts, p, tiny_memory);
	for (int i = 0; i < N; i++)
		s[i] = (struct th_stream){.fd = th_connect_bufs(ts.port, i % 2 ? 2048 : 0, 0),
		                          .data = data + i,
		                          .len = len,
		                          .max_piece = 65536,
		                          .rng = (uint64_t)i};
	th_run_streams(s, N);
	for (int i = 0; i < N; i++)
		close(s[i].fd);
	th_wait_stats(&ts, all_closed, &want, "every connection to close");
	struct rb_stats st;
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.bytes_out, (uint64_t)N * len);
	cr_expect_eq(st.buffered, 0);
	th_server_stop(&ts);
	free(data);
}

/*
 * Graceful stop with peers that send fast and read slowly: each must get
 * back exactly a prefix of what it sent, then a clean EOF, never an RST,
 * and every byte the server wrote must arrive (issue 9, item 2).
 */
REL_TEST(graceful_stop_delivers_every_echoed_byte, 120)
{
	enum { N = 20 };
	const size_t len = 64u << 20;
	unsigned char *data = malloc(len);
	unsigned char *buf = malloc(1u << 16);
	size_t sent[N] = {0}, got[N] = {0};
	bool eof[N] = {false};
	int fds[N];
	struct test_server ts;
	struct rb_stats st;
	size_t total = 0;

	th_fill(data, len, 21);
	th_server_start(&ts, p, NULL);
	/* sockmap never holds a sender back (past its cap it resets): there each
	 * peer pushes a set amount, the rest of the test is the same. */
	size_t push = p->engine == RB_ENGINE_SOCKMAP ? 4u << 20 : len;
	for (int i = 0; i < N; i++) {
		fds[i] = th_connect_bufs(ts.port, 16384, 0);
		th_set_nonblock(fds[i]);
	}
	/* Push until every socket is full (the server paused or blocked on it). */
	for (bool progress = true; progress;) {
		progress = false;
		for (int i = 0; i < N; i++) {
			cr_assert_lt(sent[i], len, "the server took all %zu bytes without echoing",
			             len);
			if (sent[i] == push)
				continue;
			ssize_t r = send(fds[i], data + sent[i], push - sent[i], MSG_NOSIGNAL);
			if (r > 0) {
				sent[i] += (size_t)r;
				progress = true;
			}
		}
		if (!progress) {
			/* Wait (bounded) for a socket to take more; none: all full. */
			struct pollfd pf[N];
			for (int i = 0; i < N; i++)
				pf[i] = (struct pollfd){.fd = sent[i] < push ? fds[i] : -1,
				                        .events = POLLOUT};
			progress = poll(pf, N, 200) > 0;
		}
	}
	rb_server_stop(ts.srv);
	/* Now read everything back, slowly: 4 KiB per socket per round. */
	for (int left = N; left > 0;) {
		struct pollfd pf[N];
		for (int i = 0; i < N; i++)
			pf[i] = (struct pollfd){.fd = eof[i] ? -1 : fds[i], .events = POLLIN};
		cr_assert_gt(poll(pf, N, 20000), 0, "no progress reading the echo back");
		for (int i = 0; i < N; i++) {
			if (eof[i] || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t r = recv(fds[i], buf, 4096, 0);
			cr_assert_geq(r, 0, "connection %d: %s after %zu bytes (want a clean EOF)",
			              i, strerror(errno), got[i]);
			if (r == 0) {
				eof[i] = true;
				left--;
				continue;
			}
			cr_assert_leq(got[i] + (size_t)r, sent[i]);
			cr_assert_eq(memcmp(buf, data + got[i], (size_t)r), 0,
			             "connection %d: wrong bytes at %zu", i, got[i]);
			got[i] += (size_t)r;
		}
	}
	for (int i = 0; i < N; i++) {
		total += got[i];
		close(fds[i]);
	}
	pthread_join(ts.thread, NULL);
	cr_assert_eq(ts.run_result, 0);
	rb_server_stats(ts.srv, &st);
	/* What the server wrote is what the clients read: nothing was lost. */
	cr_expect_eq(st.bytes_out, total, "server wrote %lu, clients read %zu",
	             (unsigned long)st.bytes_out, total);
	cr_expect_eq(st.bytes_in, st.bytes_out);
	cr_expect_eq(st.resets, 0);
	cr_expect_eq(st.stop_dropped_conns, 0);
	cr_expect_gt(total, 0);
	rb_server_destroy(ts.srv);
	free(data);
	free(buf);
}

/* The readiness engines in writev mode: where the worker's memory cap is
 * what a connection waits for. */
static bool memory_waits_from(const struct rb_stats *st, void *arg)
{
	return st->memory_waits > *(uint64_t *)arg;
}

static bool buffered_a_chunk(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->buffered >= 512 && st->memory_waits >= 1;
}

static bool one_reset(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->closed == 1 && st->resets == 1;
}

/*
 * A peer that resets while its connection waits for memory is closed at
 * once (issue 9, item 3): level-triggered pollers kept reporting its
 * hang-up, ignored, and spun; edge-triggered ones kept it open for good.
 */
REL_TEST(hangup_while_waiting_for_memory, 60)
{
	static unsigned char data[4u << 20];
	struct test_server ts;
	struct rb_stats st;
	uint64_t waits;
	int hog, victim;

	if (p->engine == RB_ENGINE_URING || p->engine == RB_ENGINE_SOCKMAP ||
	    p->copy == RB_COPY_SPLICE)
		cr_skip_test(
		        "the worker memory cap applies to the readiness engines' writev chains");
	if (p->engine == RB_ENGINE_SELECT)
		cr_skip_test("select reports no hang-up without read interest: a reset peer "
		             "waiting for memory is found when memory comes back");
	th_server_start(&ts, p, tiny_memory);
	/* A peer that never reads takes the only chunk and keeps it. */
	hog = th_connect_bufs(ts.port, 2048, 0);
	th_set_nonblock(hog);
	th_send_until(&ts, hog, data, sizeof(data), buffered_a_chunk, NULL,
	              "the non-reader to hold the only chunk");
	rb_server_stats(ts.srv, &st);
	waits = st.memory_waits;
	victim = th_connect(ts.port);
	cr_assert_eq(send(victim, "hello", 5, 0), 5);
	th_wait_stats(&ts, memory_waits_from, &waits, "the second peer to wait for memory");
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(victim, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(victim);
	th_wait_stats(&ts, one_reset, NULL, "the reset peer to be closed");
	close(hog);
	th_server_stop(&ts);
}
