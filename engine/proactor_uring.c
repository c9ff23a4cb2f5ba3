/* SPDX-License-Identifier: MIT */
/* The completion model on io_uring (issue 6). Placeholder until it lands. */
#include <errno.h>
#include <stdio.h>

#include "internal.h"

int rb__uring_probe(char *why, size_t whylen)
{
	snprintf(why, whylen, "engine 'uring' is not built yet in rebound %s", RB_VERSION_STRING);
	return -ENOTSUP;
}

int rb__uring_worker_init(struct rb_worker *w)
{
	(void)w;
	return -ENOTSUP;
}

int rb__uring_run(struct rb_worker *w)
{
	(void)w;
	return -ENOTSUP;
}

void rb__uring_worker_fini(struct rb_worker *w)
{
	(void)w;
}
