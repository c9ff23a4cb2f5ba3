/* SPDX-License-Identifier: MIT */
/*
 * io_uring UAPI that older headers lack (Debian 12: liburing 2.3 and
 * linux-libc-dev 6.1). The kernel's UAPI is stable, so what a newer kernel
 * defines can be defined here when the headers do not; whether the running
 * kernel has it is probed at run time (proactor_uring.c, caps_detect), never
 * assumed from these definitions.
 *
 * Source of every value: include/uapi/linux/io_uring.h in the Linux tree, in
 * the release named beside each definition (the one that introduced it).
 * Include after <liburing.h>.
 */
#ifndef REBOUND_URING_UAPI_H
#define REBOUND_URING_UAPI_H

#include <linux/types.h>

/* sqe->ioprio flag for send/recv: one receive (or send) spans several
 * provided buffers, taken in ring order; the CQE names the first. 6.10. */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif

/* io_uring_params.features: the kernel takes IORING_RECVSEND_BUNDLE. 6.10. */
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif

/* io_uring_params.features: io_uring_getevents_arg.min_wait_usec is
 * honoured (wait for min_complete CQEs at most that long, then return with
 * whatever is there). 6.12. */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif

/* io_uring_buf_reg.flags: buffers of this ring are consumed incrementally;
 * a receive takes only the bytes it needs and leaves the rest of the buffer
 * at the head of the ring for the next one. 6.12. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif

/* cqe->flags with IOU_PBUF_RING_INC: the buffer named by this CQE is only
 * partly used and stays in the ring; later CQEs name it again. 6.12. */
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

/* cqe->flags: the notification of a zero-copy send (IORING_OP_SEND_ZC,
 * IORING_OP_SENDMSG_ZC): the kernel no longer reads the send's memory. The
 * send's own CQE carries IORING_CQE_F_MORE when one follows. 6.0. */
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif

/* io_uring_register opcode: NAPI busy poll for the ring's sockets. 6.9. */
#ifndef IORING_REGISTER_NAPI
#define IORING_REGISTER_NAPI 27
#endif

/*
 * The argument of IORING_REGISTER_NAPI (6.9: busy_poll_to, prefer_busy_poll,
 * pad[3], resv). 6.13 named the bytes after prefer_busy_poll `opcode`,
 * pad[2], `op_param` and a 32-bit resv; zero there is the 6.9 behaviour
 * (register the settings, track NAPI IDs dynamically). Ours, by the 6.13
 * names, as no header here has it.
 */
struct rb_uring_napi {
	__u32 busy_poll_to; /* microseconds */
	__u8 prefer_busy_poll;
	__u8 opcode;
	__u8 pad[2];
	__u32 op_param;
	__u32 resv;
};

/*
 * The argument of io_uring_enter with IORING_ENTER_EXT_ARG (5.11). 6.12
 * turned the 32-bit `pad` after sigmask_sz into min_wait_usec; the layout is
 * unchanged, so older headers have the struct under its own name with the
 * field called pad. Ours, with the 6.12 name.
 */
struct rb_uring_getevents_arg {
	__u64 sigmask;
	__u32 sigmask_sz;
	__u32 min_wait_usec;
	__u64 ts;
};

#endif
