/* SPDX-License-Identifier: MIT */
/*
 * The sockmap echo: an sk_skb stream-verdict program attached to a sockhash.
 * Every socket in the hash is keyed by its own cookie, and everything it
 * receives is redirected to its own egress: the bytes never reach user
 * space. One copy of this object per worker (sockmap.c), so its maps,
 * counters and stop flag belong to that worker alone.
 *
 * The kernel queues redirected bytes on the socket's psock until its send
 * buffer takes them, and that queue has no limit and no memory accounting
 * (a peer that stops reading made it grow by 3 GB in 6 s here). So the
 * program keeps the count itself: bytes redirected minus bytes that entered
 * the TCP send queue (bytes acknowledged + write_seq - snd_una, read through
 * BTF) is what the psock holds. Past the cap it drops, marks the connection
 * and tells the worker, which resets it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "sockmap_echo.h"

/* Only the tcp_sock fields we read; CO-RE finds them in the running kernel. */
struct tcp_sock {
	__u32 write_seq;
	__u32 snd_una;
	__u64 bytes_acked;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536); /* resized before load */
	__type(key, __u64);
	__type(value, __u64);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* resized before load */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct rb_sm_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rb_sm_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* Most unsent echo one connection may have before it is reset (set before load). */
const volatile __u64 cap = 1 << 20;
/* Set by the worker when it stops: input is discarded, never echoed. */
__u32 stopping;

/* Bytes of this connection that entered the socket's send queue. */
static __always_inline __u64 queued(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return tp->bytes_acked + (__u32)(tp->write_seq - tp->snd_una);
}

/* Per-CPU counters: a verdict in process context (a socket's backlog) can be
 * interrupted by a softirq running another on the same CPU, hence atomics. */
static __always_inline void count(__u64 *field, __u64 n)
{
	__sync_fetch_and_add(field, n);
}

/*
 * The verdict for one skb of a socket's input. c->in is counted last on every
 * path: once it covers everything the socket received, no verdict is still
 * between its decision and its counting, so c->out is final for those bytes
 * (sockmap.c relies on that before it sends a FIN).
 */
static __always_inline long decide(struct __sk_buff *skb, struct rb_sm_stats *st,
                                   struct rb_sm_conn *c, __u64 *key, __u64 len)
{
	__u64 pending, sent;
	long rc;

	/* The peer's FIN comes as an empty skb. Redirected, the psock would
	 * send 0 bytes, take that for a broken pipe (EPIPE on the socket) and
	 * stop transmitting: there is nothing to echo, so drop it. */
	if (len == 0)
		return SK_DROP;
	if (stopping) {
		count(&st->discarded, len);
		return SK_DROP;
	}
	count(&st->bytes_in, len);
	if (c->flags & RB_SM_OVERFLOW) {
		count(&st->overflowed, len);
		return SK_DROP;
	}
	sent = queued(skb);
	pending = c->out > sent ? c->out - sent : 0;
	if (pending + len > cap) {
		struct rb_sm_event ev = {.cookie = *key};

		/* Drop from here on, so what the peer gets is an exact prefix. */
		c->flags |= RB_SM_OVERFLOW;
		count(&st->overflowed, len);
		if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0) < 0)
			count(&st->lost_events, 1);
		return SK_DROP;
	}
	if (pending + len > st->peak)
		st->peak = pending + len; /* a maximum: a lost race only lowers it */
	rc = bpf_sk_redirect_hash(skb, &socks, key, 0);
	if (rc == SK_PASS) {
		c->out += len;
		count(&st->bytes_out, len);
	}
	return rc;
}

SEC("sk_skb/stream_verdict")
int rb_sm_verdict(struct __sk_buff *skb)
{
	__u64 key = bpf_get_socket_cookie(skb);
	__u64 len = skb->len;
	struct rb_sm_stats *st;
	struct rb_sm_conn *c;
	__u32 zero = 0;
	long rc;

	st = bpf_map_lookup_elem(&stats, &zero);
	if (!st)
		return SK_DROP;
	c = bpf_map_lookup_elem(&conns, &key);
	if (!c) {
		/* No record (never expected: it is written first): echo anyway. */
		count(&st->strays, len);
		return bpf_sk_redirect_hash(skb, &socks, &key, 0);
	}
	rc = decide(skb, st, c, &key, len);
	/* Not before c->out: the compiler may not move this store up. */
	asm volatile("" ::: "memory");
	c->in += len;
	return rc;
}

/* GPL-compatible (bpf_skc_to_tcp_sock and BTF loads need it), MIT as the rest. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";
