/* SPDX-License-Identifier: MIT */
/* Sessions and flows: how each service wires its sockets and flows. */
#include "session.h"

static void sock_init(struct rb_session *s, struct rb_sock *k, int fd, bool tcp)
{
	*k = (struct rb_sock){
	        .h = {.kind = RB_H_SOCK}, .fd = fd, .tcp = tcp, .s = s, .flags = SOCK_CAN_WRITE};
}

static void flow_init(struct rb_flow *f, struct rb_sock *src, struct rb_sock *sink,
                      const struct rb_copy_ops *copy)
{
	f->src = src;
	f->sink = sink;
	f->copy = copy;
	f->flags = 0;
	rb_chain_init(&f->chain);
	rb__pipe_init(&f->pipe);
	f->gen_off = 0;
	f->stage = NULL;
	f->stage_len = 0;
	f->imp = NULL;
	if (src)
		src->in = f;
	if (sink)
		sink->out = f;
}

static void session_init(struct rb_session *s, enum rb_session_kind kind, unsigned n_socks,
                         unsigned n_flows)
{
	s->kind = kind;
	s->n_socks = n_socks;
	s->n_flows = n_flows;
	s->closed = false;
	s->queue = RB_Q_NONE;
	rb_list_init(&s->all);
	rb_list_init(&s->qlink);
	rb__timer_init(&s->timer, NULL);
	s->up_first = s->up_tried = 0;
	s->connect_start_us = 0;
	s->id = 0;
	s->open_us = 0;
	s->bytes_in = s->bytes_out = 0;
	s->last_io_us = s->last_write_us = 0;
	rb__timer_init(&s->idle_timer, NULL);
	s->addrs = NULL;
	s->imp = NULL;
}

void rb__session_init_echo(struct rb_session *s, int fd, bool tcp, const struct rb_copy_ops *copy)
{
	session_init(s, RB_SESSION_ECHO, 1, 1);
	sock_init(s, &s->sock[0], fd, tcp);
	flow_init(&s->flow[0], &s->sock[0], &s->sock[0], copy);
}

void rb__session_init_relay(struct rb_session *s, int fd, bool tcp, const struct rb_copy_ops *copy)
{
	session_init(s, RB_SESSION_RELAY, 2, 2);
	sock_init(s, &s->sock[0], fd, tcp);
	sock_init(s, &s->sock[1], -1, false);
	s->sock[1].flags = 0; /* writable once connected */
	s->sock[1].upstream = true;
	flow_init(&s->flow[0], &s->sock[0], &s->sock[1], copy);
	flow_init(&s->flow[1], &s->sock[1], &s->sock[0], copy);
}

void rb__session_init_discard(struct rb_session *s, int fd, bool tcp)
{
	session_init(s, RB_SESSION_DISCARD, 1, 1);
	sock_init(s, &s->sock[0], fd, tcp);
	flow_init(&s->flow[0], &s->sock[0], NULL, NULL);
}

void rb__session_init_chargen(struct rb_session *s, int fd, bool tcp)
{
	session_init(s, RB_SESSION_CHARGEN, 1, 2);
	sock_init(s, &s->sock[0], fd, tcp);
	flow_init(&s->flow[0], &s->sock[0], NULL, NULL);
	flow_init(&s->flow[1], NULL, &s->sock[0], NULL);
}
