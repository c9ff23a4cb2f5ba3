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
	src->in = f;
	sink->out = f;
}

void rb__session_init_echo(struct rb_session *s, int fd, bool tcp, const struct rb_copy_ops *copy)
{
	s->n_socks = 1;
	s->n_flows = 1;
	s->closed = false;
	s->queue = RB_Q_NONE;
	rb_list_init(&s->all);
	rb_list_init(&s->qlink);
	sock_init(s, &s->sock[0], fd, tcp);
	flow_init(&s->flow[0], &s->sock[0], &s->sock[0], copy);
}
