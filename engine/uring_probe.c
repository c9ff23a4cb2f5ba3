/* SPDX-License-Identifier: MIT */
/*
 * io_uring capability probing for the completion engine: whether it may run
 * at all (sysctl, seccomp, kernel age), and which newer features it can use.
 * Process-wide, done once.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rb_config.h"
#include "rebound/rebound.h"
#include "uring_probe.h"
#include "uring_uapi.h"

unsigned rb__uring_test_unsupported;
int rb__uring_test_napi_errno;

static struct rb_uring_caps caps;
static pthread_once_t caps_once = PTHREAD_ONCE_INIT;

/* mmap a buffer ring of entries slots and register it as group bgid
 * (by hand where liburing, like Debian 12's 2.3, has no
 * io_uring_setup_buf_ring). Returns 0 or -errno. */
int rb__uring_bufring_register(struct io_uring *ring, unsigned entries, unsigned bgid,
                               unsigned flags, struct io_uring_buf_ring **out, size_t *len_out)
{
	size_t len = entries * sizeof(struct io_uring_buf);
#if RB_HAVE_IO_URING_SETUP_BUF_RING
	int rc;

	/* Newer liburing does the mmap and registration itself. */
	*out = io_uring_setup_buf_ring(ring, entries, (int)bgid, flags, &rc);
	if (!*out)
		return rc;
	*len_out = len;
	return 0;
#else
	struct io_uring_buf_reg reg;
	void *mem;
	int rc;

	len = (len + 4095) & ~(size_t)4095;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)mem;
	reg.ring_entries = entries;
	reg.bgid = (uint16_t)bgid;
	/* io_uring_buf_reg.flags (Linux 6.4) is `pad` in liburing 2.3's copy. */
	reg.pad = (uint16_t)flags;
	rc = io_uring_register_buf_ring(ring, &reg, 0);
	if (rc < 0) {
		munmap(mem, len);
		return rc;
	}
	*out = mem;
	*len_out = len;
	io_uring_buf_ring_init(*out);
	return 0;
#endif
}

static int wait_one(struct io_uring *ring, struct io_uring_cqe **cqe)
{
	struct __kernel_timespec ts = {.tv_sec = 1};

	return io_uring_wait_cqe_timeout(ring, cqe, &ts);
}

/*
 * Arm a multishot receive on a socketpair holding `have` bytes and report
 * the first CQE's result and flags. With limit, sqe->optlen (the field
 * file_index shares in older headers) caps the bytes the request may take.
 */
static int try_mshot(struct io_uring *ring, int fd, uint32_t limit, int *res, unsigned *flags)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	struct io_uring_cqe *cqe;
	int rc;

	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 7;
	sqe->file_index = limit;
	sqe->user_data = 1;
	rc = io_uring_submit(ring);
	if (rc < 0)
		return rc;
	rc = wait_one(ring, &cqe);
	if (rc < 0)
		return rc;
	*res = cqe->res;
	*flags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	if (*flags & IORING_CQE_F_MORE) {
		/* Still armed: cancel it and wait for both CQEs to leave the ring clean. */
		sqe = io_uring_get_sqe(ring);
		io_uring_prep_cancel64(sqe, 1, 0);
		sqe->user_data = 2;
		io_uring_submit(ring);
		for (int i = 0; i < 2; i++) {
			if (wait_one(ring, &cqe) < 0)
				break;
			io_uring_cqe_seen(ring, cqe);
		}
	}
	return 0;
}

/* Multishot receive and its byte limit, tried for real on a socketpair:
 * the opcode table cannot tell either. */
static void caps_probe_recv(struct io_uring *ring)
{
	struct io_uring_buf_ring *br;
	static char bufs[8][64];
	size_t brlen;
	unsigned flags;
	int sv[2], res;

	if (rb__uring_bufring_register(ring, 8, 7, 0, &br, &brlen) < 0)
		return;
	for (int i = 0; i < 8; i++)
		io_uring_buf_ring_add(br, bufs[i], sizeof(bufs[i]), (uint16_t)i, 7, i);
	io_uring_buf_ring_advance(br, 8);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		goto out;
	if (write(sv[1], "a", 1) == 1 && try_mshot(ring, sv[0], 0, &res, &flags) == 0)
		caps.mshot_recv = res == 1 && (flags & IORING_CQE_F_MORE);
	/* Two bytes against a limit of one: a kernel that honours the limit ends
	 * the request (no F_MORE); an old one rejects optlen with EINVAL. */
	if (caps.mshot_recv && write(sv[1], "bc", 2) == 2 &&
	    try_mshot(ring, sv[0], 1, &res, &flags) == 0)
		caps.mshot_limit = res > 0 && !(flags & IORING_CQE_F_MORE);
	close(sv[0]);
	close(sv[1]);
out:
	io_uring_unregister_buf_ring(ring, 7);
	munmap(br, brlen);
}

/* Incremental consumption: a kernel without it refuses the flag (EINVAL). */
static bool caps_probe_inc(struct io_uring *ring)
{
	struct io_uring_buf_ring *br;
	size_t brlen;

	if (rb__uring_bufring_register(ring, 8, 8, IOU_PBUF_RING_INC, &br, &brlen) < 0)
		return false;
	io_uring_unregister_buf_ring(ring, 8);
	munmap(br, brlen);
	return true;
}

static int read_disabled_sysctl(void)
{
	char b[16] = "";
	int fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return 0; /* older than 6.6: no such switch */
	n = read(fd, b, sizeof(b) - 1);
	close(fd);
	return n > 0 ? atoi(b) : 0;
}

static void caps_detect(void)
{
	static const int need[] = {IORING_OP_ACCEPT,  IORING_OP_RECV,     IORING_OP_SEND,
	                           IORING_OP_SENDMSG, IORING_OP_POLL_ADD, IORING_OP_ASYNC_CANCEL,
	                           IORING_OP_SOCKET};
	struct io_uring_probe *probe;
	struct io_uring ring;
	int disabled = read_disabled_sysctl(), rc;

	if (disabled == 2) {
		caps.err = -EPERM;
		snprintf(caps.why, sizeof(caps.why),
		         "engine 'uring' cannot run here: io_uring is switched off by the "
		         "sysctl kernel.io_uring_disabled=2");
		return;
	}
	rc = io_uring_queue_init(4, &ring, 0);
	if (rc == -EPERM) {
		caps.err = rc;
		if (disabled == 1)
			snprintf(
			        caps.why, sizeof(caps.why),
			        "engine 'uring' cannot run here: kernel.io_uring_disabled=1 allows "
			        "io_uring only to members of kernel.io_uring_group");
		else
			snprintf(caps.why, sizeof(caps.why),
			         "engine 'uring' cannot run here: io_uring_setup was refused "
			         "(EPERM): "
			         "a seccomp filter or container policy blocks io_uring");
		return;
	}
	if (rc == -ENOSYS) {
		caps.err = rc;
		snprintf(caps.why, sizeof(caps.why),
		         "engine 'uring' cannot run here: io_uring_setup is not implemented "
		         "(ENOSYS): a kernel without CONFIG_IO_URING, or a seccomp filter");
		return;
	}
	if (rc < 0) {
		caps.err = -ENOTSUP;
		snprintf(caps.why, sizeof(caps.why),
		         "engine 'uring' cannot run here: io_uring_setup failed: %s",
		         strerror(-rc));
		return;
	}
	probe = io_uring_get_probe_ring(&ring);
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		/* IORING_OP_SOCKET stands for Linux 5.19: multishot accept, buffer rings. */
		if (!probe || !io_uring_opcode_supported(probe, need[i])) {
			caps.err = -ENOTSUP;
			snprintf(caps.why, sizeof(caps.why),
			         "engine 'uring' cannot run here: the kernel's io_uring is too old "
			         "(needs Linux 5.19 or later: multishot accept, buffer rings)");
			break;
		}
	}
	/* Zero-copy sends: in the opcode table, both the plain and the msghdr one. */
	caps.send_zc = probe && io_uring_opcode_supported(probe, IORING_OP_SEND_ZC) &&
	               io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC) &&
	               !(rb__uring_test_unsupported & RB_URING_SEND_ZC);
	if (probe)
		io_uring_free_probe(probe);
	if (!caps.err) {
		caps.reg_ring = io_uring_register_ring_fd(&ring) == 1;
		if (caps.reg_ring)
			io_uring_unregister_ring_fd(&ring);
		caps_probe_recv(&ring);
		caps.bundle = (ring.features & IORING_FEAT_RECVSEND_BUNDLE) != 0 &&
		              !(rb__uring_test_unsupported & RB_URING_BUNDLE);
		caps.min_wait = (ring.features & IORING_FEAT_MIN_TIMEOUT) != 0 &&
		                !(rb__uring_test_unsupported & RB_URING_BATCH);
		caps.inc = caps_probe_inc(&ring) && !(rb__uring_test_unsupported & RB_URING_INC);
	}
	io_uring_queue_exit(&ring);
}

int rb__uring_probe(char *why, size_t whylen)
{
	pthread_once(&caps_once, caps_detect);
	if (caps.err && why && whylen)
		snprintf(why, whylen, "%s", caps.why);
	return caps.err;
}

const struct rb_uring_caps *rb__uring_caps(void)
{
	pthread_once(&caps_once, caps_detect);
	return &caps;
}

int rb__uring_napi_register(struct io_uring *ring, unsigned usec)
{
	struct rb_uring_napi napi = {.busy_poll_to = usec};

	if (rb__uring_test_napi_errno)
		return -rb__uring_test_napi_errno;
	/* Through the system call: liburing 2.3 has no io_uring_register_napi. */
	if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_NAPI, &napi, 1) < 0)
		return -errno;
	return 0;
}

int rb__uring_napi_check(unsigned usec, char *err, size_t errlen)
{
	struct io_uring ring;
	int rc = io_uring_queue_init(2, &ring, 0);

	if (rc == 0) {
		rc = rb__uring_napi_register(&ring, usec);
		io_uring_queue_exit(&ring);
	}
	if (rc == 0)
		return 0;
	snprintf(err, errlen,
	         "--busy-poll %u: the uring engine cannot register NAPI busy polling: %s%s", usec,
	         strerror(-rc), rc == -EINVAL ? " (IORING_REGISTER_NAPI needs Linux 6.9)" : "");
	return -ENOTSUP;
}
