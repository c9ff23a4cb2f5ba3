/* SPDX-License-Identifier: MIT */
/*
 * What this kernel's io_uring can do, probed once per process, by trying the
 * features for real where the opcode table cannot tell (uring_probe.c).
 */
#ifndef REBOUND_URING_PROBE_H
#define REBOUND_URING_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <liburing.h>

struct rb_uring_caps {
	int err; /* 0, or why the engine cannot run (-errno) */
	char why[200];
	bool mshot_recv;  /* multishot receive (Linux 6.0) */
	bool mshot_limit; /* multishot receive byte limit in sqe->optlen */
	bool reg_ring;    /* registered ring descriptors */
	bool bundle;      /* receive bundles: IORING_FEAT_RECVSEND_BUNDLE (6.10) */
	bool inc;         /* incremental buffer rings: IOU_PBUF_RING_INC (6.12) */
	bool min_wait;    /* min-wait in io_uring_enter: IORING_FEAT_MIN_TIMEOUT (6.12) */
	bool send_zc;     /* IORING_OP_SEND_ZC (6.0) and IORING_OP_SENDMSG_ZC (6.1) */
};

/* 0 if the uring engine can run here, else -errno with a reason in why. */
int rb__uring_probe(char *why, size_t whylen);
/* The probed capabilities (probing first if needed). */
const struct rb_uring_caps *rb__uring_caps(void);

/* Test hook: RB_URING_* features the probe reports as absent, as on an older
 * kernel (set before the first server of the process is created). */
extern unsigned rb__uring_test_unsupported;

/* mmap a buffer ring of `entries` slots and register it as group bgid with
 * flags (IOU_PBUF_RING_*). Returns 0 or -errno. */
int rb__uring_bufring_register(struct io_uring *ring, unsigned entries, unsigned bgid,
                               unsigned flags, struct io_uring_buf_ring **out, size_t *len_out);

/*
 * NAPI busy poll for a ring's sockets (IORING_REGISTER_NAPI, Linux 6.9), for
 * usec microseconds. 0 or -errno.
 */
int rb__uring_napi_register(struct io_uring *ring, unsigned usec);
/* Whether a ring can register NAPI here: 0, or -ENOTSUP with a one-line
 * reason in err naming --busy-poll, its value and the kernel's error. */
int rb__uring_napi_check(unsigned usec, char *err, size_t errlen);
/* Test hook: a positive errno that NAPI registration reports instead of
 * asking the kernel (set before a server is created). */
extern int rb__uring_test_napi_errno;

#endif
