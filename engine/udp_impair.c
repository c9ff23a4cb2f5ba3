/* SPDX-License-Identifier: MIT */
/*
 * UDP impairments (udp_impair.h): the fate of each answer, and the queue
 * of delayed answers, for both UDP echoes. Nothing here sends: the model's
 * send callback does, when the socket's timer finds an answer due.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "udp_impair.h"

static void delay_fire(struct rb_timer *t, void *arg);

void rb__udp_imp_init(struct rb_udp_imp *ui, rb_udp_imp_send_fn *send)
{
	memset(ui, 0, sizeof(*ui));
	ui->send = send;
	rb__timer_init(&ui->timer, delay_fire);
}

void rb__udp_imp_fini(struct rb_worker *w, struct rb_udp_imp *ui)
{
	rb__timer_cancel(&w->timers, &ui->timer);
	for (unsigned i = 0; i < ui->dq_n; i++) {
		RB_STAT_SUB(w, buffered, ui->dq[i]->len);
		free(ui->dq[i]);
	}
	ui->held -= ui->dq_n;
	ui->dq_n = 0;
	free(ui->dq);
	ui->dq = NULL;
}

void rb__udp_imp_stop(struct rb_worker *w, struct rb_udp_imp *ui)
{
	ui->stopped = true;
	rb__timer_cancel(&w->timers, &ui->timer);
}

const struct rb_impair *rb__udp_imp_set(struct rb_worker *w, struct rb_udp_imp *ui)
{
	const struct rb_impair_set *is = __atomic_load_n(&w->srv->impair, __ATOMIC_ACQUIRE);

	if (!is || !is->udp)
		return NULL;
	if (is != ui->seen) {
		/* A new set (SIGHUP, POST /impair): its own stream of choices. */
		ui->seen = is;
		ui->rng = rb__rng_seed(is->cfg.seed, w->id, 1ull << 63);
	}
	return &is->cfg;
}

/* ---- the queue of delayed answers ---- */

static bool dg_before(const struct rb_dgram *a, const struct rb_dgram *b)
{
	return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void dq_push(struct rb_udp_imp *ui, struct rb_dgram *d)
{
	unsigned i = ui->dq_n++;

	while (i > 0 && dg_before(d, ui->dq[(i - 1) / 2])) {
		ui->dq[i] = ui->dq[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	ui->dq[i] = d;
}

static struct rb_dgram *dq_pop(struct rb_udp_imp *ui)
{
	struct rb_dgram *top = ui->dq[0], *last = ui->dq[--ui->dq_n];
	unsigned i = 0;

	for (;;) {
		unsigned c = 2 * i + 1;
		if (c >= ui->dq_n)
			break;
		if (c + 1 < ui->dq_n && dg_before(ui->dq[c + 1], ui->dq[c]))
			c++;
		if (!dg_before(ui->dq[c], last))
			break;
		ui->dq[i] = ui->dq[c];
		i = c;
	}
	if (ui->dq_n)
		ui->dq[i] = last;
	return top;
}

static void dq_arm(struct rb_worker *w, struct rb_udp_imp *ui)
{
	if (ui->dq_n && !ui->stopped &&
	    (!rb__timer_armed(&ui->timer) || ui->timer.when > ui->dq[0]->due))
		rb__timer_arm(&w->timers, &ui->timer, ui->dq[0]->due);
}

/* Hold a copy of the answer until `due`; false if it cannot be held. */
static bool delay_answer(struct rb_worker *w, struct rb_udp_imp *ui, const void *to,
                         socklen_t tolen, const void *data, size_t len, uint64_t due)
{
	struct rb_dgram *d;

	if (!ui->dq && !(ui->dq = malloc(RB_LIMIT_IMPAIR_UDP_HELD * sizeof(*ui->dq))))
		return false;
	if (ui->held == RB_LIMIT_IMPAIR_UDP_HELD || !(d = malloc(sizeof(*d) + len)))
		return false;
	if (tolen > sizeof(d->addr))
		tolen = sizeof(d->addr);
	d->kind = 0;
	d->owner = NULL;
	rb_list_init(&d->link);
	d->due = due;
	d->seq = ui->dq_seq++;
	d->len = len;
	memcpy(&d->addr, to, tolen);
	memcpy(d->data, data, len);
	d->iov = (struct iovec){.iov_base = d->data, .iov_len = len};
	d->msg = (struct msghdr){
	        .msg_name = &d->addr,
	        .msg_namelen = tolen,
	        .msg_iov = &d->iov,
	        .msg_iovlen = 1,
	};
	dq_push(ui, d);
	ui->held++;
	RB_STAT_ADD(w, buffered, len);
	RB_STAT_MAX(w, peak_buffered, w->st.buffered);
	RB_STAT_ADD(w, datagrams_delayed, 1);
	dq_arm(w, ui);
	return true;
}

static void delay_fire(struct rb_timer *t, void *arg)
{
	struct rb_udp_imp *ui = rb_container_of(t, struct rb_udp_imp, timer);
	struct rb_worker *w = arg;
	uint64_t now = w->now_us;

	while (ui->dq_n && ui->dq[0]->due <= now) {
		struct rb_dgram *d = dq_pop(ui);
		if (ui->send(w, ui, d) == -EAGAIN) {
			/* The socket is full: try again in a millisecond. */
			dq_push(ui, d);
			rb__timer_arm(&w->timers, t, now + RB_US_PER_MS);
			return;
		}
	}
	dq_arm(w, ui);
}

void rb__udp_imp_done(struct rb_worker *w, struct rb_udp_imp *ui, struct rb_dgram *d)
{
	RB_STAT_SUB(w, buffered, d->len);
	ui->held--;
	free(d);
}

/* ---- each answer's fate ---- */

unsigned rb__udp_imp_answer(struct rb_worker *w, struct rb_udp_imp *ui, const struct rb_impair *c,
                            const void *to, socklen_t tolen, void *data, size_t len, bool mine,
                            uint64_t now)
{
	const struct rb_impair_flow *f = &c->down;
	unsigned copies = 1, stay = 0;

	if (rb__rng_chance(&ui->rng, c->loss_p)) {
		RB_STAT_ADD(w, datagrams_lost, 1);
		return 0;
	}
	/* Drawn whatever the bytes, so chargen keeps the same sequence. */
	if (rb__rng_chance(&ui->rng, c->corrupt_p) && mine && len > 0) {
		unsigned bit = rb__rng_upto(&ui->rng, (unsigned)(len * 8 - 1));
		((unsigned char *)data)[bit / 8] ^= (unsigned char)(1u << (bit % 8));
		RB_STAT_ADD(w, datagrams_corrupted, 1);
	}
	if (rb__rng_chance(&ui->rng, c->duplicate_p)) {
		copies = 2;
		RB_STAT_ADD(w, datagrams_duplicated, 1);
	}
	for (unsigned i = 0; i < copies; i++) {
		if (f->delay_p && (f->delay_ms || f->jitter_ms) &&
		    rb__rng_chance(&ui->rng, f->delay_p)) {
			uint64_t due = now + rb__rng_delay_us(&ui->rng, f->delay_ms, f->jitter_ms);
			if (!delay_answer(w, ui, to, tolen, data, len, due))
				RB_STAT_ADD(w, datagram_drops, 1);
			continue;
		}
		stay++;
	}
	return stay;
}
