/* SPDX-License-Identifier: MIT */
/*
 * Sessions and flows (DESIGN.md, "Growing from an echo into an echo proxy"):
 *
 *   session = 1 or 2 sockets + 1 or 2 flows
 *   flow    = source socket -> buffer (chunk chain or pipe) -> sink socket
 *   echo    = one flow, A -> A
 *
 * These records are shared by the models: the readiness model runs its
 * state machine per flow (reactor.c); the completion model keeps the same
 * flow state for its bookkeeping (proactor_uring.c).
 */
#ifndef REBOUND_SESSION_H
#define REBOUND_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iopool.h"
#include "list.h"
#include "pipes.h"
#include "timer.h"

/* What a poller event's pointer points at. */
enum rb_handle_kind { RB_H_SOCK = 1, RB_H_LISTENER, RB_H_CONTROL };

struct rb_handle {
	enum rb_handle_kind kind;
};

/* A socket's readiness, as the readiness model knows it. */
enum {
	SOCK_CAN_READ = 1u << 0,   /* may have input (no EAGAIN seen since) */
	SOCK_CAN_WRITE = 1u << 1,  /* may take output */
	SOCK_PEER_HUP = 1u << 2,   /* the poller saw RDHUP/HUP: read to EOF or error */
	SOCK_CONNECTING = 1u << 3, /* a non-blocking connect is in progress */
	SOCK_DETACHED = 1u << 4,   /* shut both ways and off the poller: nothing more to hear */
};

/* A flow's state: the same in both models. */
enum {
	FLOW_RD_EOF = 1u << 0,    /* no more input: the source's FIN, or stopping */
	FLOW_PAUSED = 1u << 1,    /* the buffer is at its cap */
	FLOW_PIPE_WAIT = 1u << 2, /* splice read got EAGAIN with bytes in the pipe */
	FLOW_SRC_EOF = 1u << 3,   /* a read returned 0: the source's FIN arrived */
	FLOW_DISCARD = 1u << 4,   /* stopping: input is read and dropped, never sent */
	FLOW_SINK_SHUT = 1u << 5, /* our FIN went to the sink */
	FLOW_STALLED = 1u << 6,   /* impaired: not read (--accept-delay, --stall-after) */
};

/* Why a session closed (counted per reason; in the connection log). */
enum rb_close_reason {
	RB_CLOSE_EOF,           /* every flow done: FINs both ways */
	RB_CLOSE_ERROR,         /* an error or an RST (ours or the peer's) */
	RB_CLOSE_IDLE,          /* --idle-timeout */
	RB_CLOSE_WRITE_TIMEOUT, /* --write-timeout: the peer stopped reading */
	RB_CLOSE_SHUTDOWN,      /* the stop deadline */
};

/* What a session is: which sockets and flows it has. */
enum rb_session_kind {
	RB_SESSION_ECHO,    /* A -> A */
	RB_SESSION_RELAY,   /* client -> upstream, upstream -> client */
	RB_SESSION_DISCARD, /* A -> nothing */
	RB_SESSION_CHARGEN, /* generator -> A, and A -> nothing */
};

struct rb_session;
struct rb_flow;
struct rb_copy_ops;
struct rb_session_addrs;
struct rb_flow_impair;
struct rb_session_impair;

struct rb_sock {
	struct rb_handle h; /* RB_H_SOCK */
	int fd;
	uint32_t flags;    /* SOCK_* */
	uint32_t interest; /* registered with a level-triggered poller */
	bool tcp;
	bool upstream; /* the relay's connection to its upstream */
	struct rb_session *s;
	struct rb_flow *in;  /* the flow that reads from this socket, if any */
	struct rb_flow *out; /* the flow that writes to it, if any */
};

struct rb_flow {
	struct rb_sock *src, *sink;     /* NULL source: a generator; NULL sink: discard */
	const struct rb_copy_ops *copy; /* chosen once, when the flow is made */
	uint32_t flags;                 /* FLOW_* */
	struct rb_chain chain;
	struct rb_pipe pipe;
	size_t gen_off;       /* a generator's position in its stream */
	unsigned char *stage; /* sockperf: input not yet framed */
	size_t stage_len;
	struct rb_flow_impair *imp; /* impairments (impair.h), NULL: none */
};

#define RB_SESSION_SOCKS 2
#define RB_SESSION_FLOWS 2

/* The one list a session's qlink is on (the readiness model's lists). */
enum rb_session_queue {
	RB_Q_NONE = 0,
	RB_Q_READY,   /* read budget used up: run again after the others */
	RB_Q_MEMWAIT, /* needs a chunk the worker memory cap does not allow now */
	RB_Q_GRAVE,   /* closed: freed after the event batch (rule 7) */
};

struct rb_session {
	enum rb_session_kind kind;
	struct rb_sock sock[RB_SESSION_SOCKS];
	struct rb_flow flow[RB_SESSION_FLOWS];
	unsigned n_socks, n_flows;
	bool closed; /* events for it are stale */
	enum rb_session_queue queue;
	struct rb_list all;   /* every session of the worker */
	struct rb_list qlink; /* the list named by queue */
	/* Relay: the upstream connect in progress. */
	struct rb_timer timer;       /* its deadline (--connect-timeout) */
	unsigned up_first, up_tried; /* first address tried, and how many so far */
	uint64_t connect_start_us;
	/* Accounting and the test bed's timeouts. */
	uint64_t id;      /* per worker, from 1: the connection log's number */
	uint64_t open_us; /* when it was accepted */
	uint64_t bytes_in, bytes_out;
	uint64_t last_io_us;            /* bytes last moved, either way (--idle-timeout) */
	uint64_t last_write_us;         /* output last made progress (--write-timeout) */
	struct rb_timer idle_timer;     /* the earlier of the two deadlines */
	struct rb_session_addrs *addrs; /* --log-connections: its addresses */
	struct rb_session_impair *imp;  /* impairments (impair.h), NULL: none */
};

/* An echo: one socket, one flow from it to itself. */
void rb__session_init_echo(struct rb_session *s, int fd, bool tcp, const struct rb_copy_ops *copy);
/* A relay: the client's socket (fd) and an upstream socket not yet open
 * (fd -1), a flow each way. */
void rb__session_init_relay(struct rb_session *s, int fd, bool tcp, const struct rb_copy_ops *copy);
/* Discard: one socket, its input read and dropped. */
void rb__session_init_discard(struct rb_session *s, int fd, bool tcp);
/* Chargen: one socket, fed by a generator; its input is dropped. */
void rb__session_init_chargen(struct rb_session *s, int fd, bool tcp);

/* Bytes a flow holds that its sink has not taken yet. */
static inline size_t rb__flow_pending(const struct rb_flow *f)
{
	return f->chain.bytes + f->pipe.bytes;
}

/* Chunks a session's flows hold. */
static inline size_t rb__session_chunks(const struct rb_session *s)
{
	size_t n = 0;

	for (unsigned i = 0; i < s->n_flows; i++)
		n += s->flow[i].chain.chunks;
	return n;
}

/* Input is wanted: not at EOF, not paused at a cap or waiting on a pipe;
 * or stopping and still discarding until the source's FIN. */
static inline bool rb__flow_wants_input(const struct rb_flow *f)
{
	if (!f->src)
		return false;
	if (f->flags & FLOW_DISCARD)
		return !(f->flags & FLOW_SRC_EOF);
	return !(f->flags & (FLOW_RD_EOF | FLOW_PAUSED | FLOW_PIPE_WAIT | FLOW_STALLED));
}

/* Everything the source will send has been passed on (or dropped). A flow
 * that is discarding lingers until the source's FIN. */
static inline bool rb__flow_done(const struct rb_flow *f)
{
	return (f->flags & FLOW_RD_EOF) && rb__flow_pending(f) == 0 &&
	       (!(f->flags & FLOW_DISCARD) || !f->src || (f->flags & FLOW_SRC_EOF)) &&
	       (!f->sink || (f->flags & FLOW_SINK_SHUT));
}

#endif
