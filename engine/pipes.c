/* SPDX-License-Identifier: MIT */
/*
 * Splice pipes: one per connection in --copy splice mode, from a per-worker
 * cache (haproxy's get_pipe/put_pipe). A pipe goes back to the cache only
 * if it is verifiably empty; one with bytes left in it is closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

int rb__pipe_max_size(void)
{
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
	int v = -1;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

int rb__pipe_get(struct rb_worker *w, struct rb_conn *c)
{
	int fds[2];

	if (w->n_pipes > 0) {
		w->n_pipes--;
		c->pipe_rd = w->pipes[w->n_pipes].rd;
		c->pipe_wr = w->pipes[w->n_pipes].wr;
		c->pipe_cap = w->pipes[w->n_pipes].cap;
		c->pipe_bytes = 0;
		RB_STAT_ADD(w, pipe_cache_hits, 1);
		return 0;
	}
	if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
		return -errno;
	/* Best effort: the kernel may refuse a large pipe (per-user page limits);
	 * F_GETPIPE_SZ tells what we really have. */
	fcntl(fds[1], F_SETPIPE_SZ, (int)w->srv->pipe_size);
	int sz = fcntl(fds[1], F_GETPIPE_SZ);
	c->pipe_rd = fds[0];
	c->pipe_wr = fds[1];
	c->pipe_cap = sz > 0 ? (size_t)sz : 65536;
	c->pipe_bytes = 0;
	return 0;
}

void rb__pipe_put(struct rb_worker *w, struct rb_conn *c, bool verify)
{
	int queued = 0;

	if (c->pipe_rd < 0)
		return;
	/* Our count is exact (it adds and subtracts what splice reported), so a
	 * drained pipe goes straight back. When a connection closes, FIONREAD
	 * double-checks, so no bug could ever hand a peer someone else's bytes. */
	if (c->pipe_bytes == 0 && w->n_pipes < RB_PIPE_CACHE &&
	    (!verify || (ioctl(c->pipe_rd, FIONREAD, &queued) == 0 && queued == 0))) {
		w->pipes[w->n_pipes].rd = c->pipe_rd;
		w->pipes[w->n_pipes].wr = c->pipe_wr;
		w->pipes[w->n_pipes].cap = c->pipe_cap;
		w->n_pipes++;
	} else {
		close(c->pipe_rd);
		close(c->pipe_wr);
	}
	c->pipe_rd = c->pipe_wr = -1;
	c->pipe_bytes = 0;
}

void rb__pipes_fini(struct rb_worker *w)
{
	while (w->n_pipes > 0) {
		w->n_pipes--;
		close(w->pipes[w->n_pipes].rd);
		close(w->pipes[w->n_pipes].wr);
	}
}
