/* SPDX-License-Identifier: MIT */
/*
 * The select engine with descriptors pushed past FD_SETSIZE: connections
 * whose descriptor would not fit are refused (closed at once, counted),
 * those below keep echoing, and FD_SET never sees a large descriptor (the
 * suite is built with _FORTIFY_SOURCE, which aborts on one).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

/* One 100-byte round trip: true if echoed exactly, false if the server refused. */
static bool round_trip(int fd, unsigned char seed)
{
	unsigned char out[100], in[100];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (unsigned char)(seed + i);
	if (send(fd, out, sizeof(out), MSG_NOSIGNAL) != (ssize_t)sizeof(out))
		return false;
	while (n < sizeof(in)) {
		ssize_t r = recv(fd, in + n, sizeof(in) - n, 0);
		if (r <= 0) {
			cr_assert(r == 0 || errno == ECONNRESET, "recv: %s", strerror(errno));
			cr_assert_eq(n, 0, "refused after %zu echoed bytes", n);
			return false;
		}
		n += (size_t)r;
	}
	cr_assert(memcmp(in, out, sizeof(in)) == 0, "echo differs");
	return true;
}

static bool refused_at_least(const struct rb_stats *st, void *arg)
{
	return st->refused >= *(uint64_t *)arg;
}

Test(select, refuses_descriptors_past_fd_setsize, .timeout = 60)
{
	struct engine_param p = {RB_ENGINE_SELECT, RB_TRIGGER_LEVEL, RB_COPY_WRITEV};
	struct rlimit rl;
	struct test_server ts;
	struct rb_stats st;
	int dummies[1100], nd = 0, clients[64], nc = 0, ok = 0, refused = 0;

	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	cr_assert_geq(rl.rlim_max, 2048, "need RLIMIT_NOFILE hard limit >= 2048");
	rl.rlim_cur = 2048;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);

	th_server_start(&ts, &p, NULL);
	/* Occupy descriptors so the next few dozen straddle FD_SETSIZE. */
	for (;;) {
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		cr_assert_geq(fd, 0);
		dummies[nd++] = fd;
		if (fd >= FD_SETSIZE - 20)
			break;
	}
	/* Each client takes one descriptor and its server side the next. */
	while (nc < 40) {
		int fd = th_connect(ts.port);
		clients[nc++] = fd;
		if (round_trip(fd, (unsigned char)nc))
			ok++;
		else
			refused++;
	}
	cr_assert_geq(ok, 5, "only %d connections echoed", ok);
	cr_assert_geq(refused, 5, "only %d connections refused", refused);
	/* A client can see its refusal a moment before the server counts it. */
	uint64_t want = (uint64_t)refused;
	th_wait_stats(&ts, refused_at_least, &want, "the refusals to be counted");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.refused, (uint64_t)refused, "stats refused %lu, clients saw %d",
	             (unsigned long)st.refused, refused);
	cr_assert_eq(st.accepted, (uint64_t)ok);
	/* The connections that fit still echo, after the refusals. */
	for (int i = 0; i < ok; i++)
		cr_assert(round_trip(clients[i], (unsigned char)(200 + i)), "client %d stopped", i);
	for (int i = 0; i < nc; i++)
		close(clients[i]);
	for (int i = 0; i < nd; i++)
		close(dummies[i]);
	th_server_stop(&ts);
}
