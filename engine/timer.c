/* SPDX-License-Identifier: MIT */
/*
 * The timer heap. Nodes live in the timers themselves, linked as a complete
 * binary tree: position k (1-based, in level order) is reached from the
 * root by the bits of k below its highest, 0 = left, 1 = right. Insertion
 * takes position n + 1; removal moves the node at position n into the hole.
 */
#include <stddef.h>

#include "timer.h"

static bool earlier(const struct rb_timer *a, const struct rb_timer *b)
{
	return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

/* The link that holds (or would hold) position pos >= 1; *parent its parent. */
static struct rb_timer **slot_of(struct rb_timers *h, size_t pos, struct rb_timer **parent)
{
	struct rb_timer **slot = &h->root;
	int bit = 0;

	*parent = NULL;
	for (size_t p = pos; p > 1; p >>= 1)
		bit++;
	while (bit-- > 0) {
		*parent = *slot;
		slot = (pos >> bit) & 1 ? &(*parent)->right : &(*parent)->left;
	}
	return slot;
}

/* Make child (a child of parent) take parent's place, and parent child's. */
static void swap_with_parent(struct rb_timers *h, struct rb_timer *parent, struct rb_timer *child)
{
	struct rb_timer *grand = parent->parent, *sibling;
	struct rb_timer *cl = child->left, *cr = child->right;

	if (parent->left == child) {
		sibling = parent->right;
		child->left = parent;
		child->right = sibling;
	} else {
		sibling = parent->left;
		child->right = parent;
		child->left = sibling;
	}
	if (sibling)
		sibling->parent = child;
	parent->left = cl;
	parent->right = cr;
	if (cl)
		cl->parent = parent;
	if (cr)
		cr->parent = parent;
	parent->parent = child;
	child->parent = grand;
	if (!grand)
		h->root = child;
	else if (grand->left == parent)
		grand->left = child;
	else
		grand->right = child;
}

static void sift_up(struct rb_timers *h, struct rb_timer *t)
{
	while (t->parent && earlier(t, t->parent))
		swap_with_parent(h, t->parent, t);
}

static void sift_down(struct rb_timers *h, struct rb_timer *t)
{
	for (;;) {
		struct rb_timer *min = t;
		if (t->left && earlier(t->left, min))
			min = t->left;
		if (t->right && earlier(t->right, min))
			min = t->right;
		if (min == t)
			return;
		swap_with_parent(h, t, min);
	}
}

void rb__timers_init(struct rb_timers *h)
{
	h->root = NULL;
	h->n = 0;
	h->seq = 0;
}

void rb__timer_init(struct rb_timer *t, rb_timer_fn *fn)
{
	*t = (struct rb_timer){.fn = fn};
}

static void heap_remove(struct rb_timers *h, struct rb_timer *t)
{
	struct rb_timer *parent, **slot = slot_of(h, h->n, &parent), *last = *slot;

	*slot = NULL;
	h->n--;
	t->armed = false;
	if (last == t) {
		t->parent = t->left = t->right = NULL;
		return;
	}
	/* The last node fills the hole, then moves to where it belongs. */
	last->left = t->left;
	last->right = t->right;
	last->parent = t->parent;
	if (last->left)
		last->left->parent = last;
	if (last->right)
		last->right->parent = last;
	if (!t->parent)
		h->root = last;
	else if (t->parent->left == t)
		t->parent->left = last;
	else
		t->parent->right = last;
	t->parent = t->left = t->right = NULL;
	sift_down(h, last);
	sift_up(h, last);
}

void rb__timer_arm(struct rb_timers *h, struct rb_timer *t, uint64_t when)
{
	struct rb_timer *parent, **slot;

	if (t->armed)
		heap_remove(h, t);
	t->when = when;
	t->seq = h->seq++;
	t->left = t->right = NULL;
	slot = slot_of(h, h->n + 1, &parent);
	*slot = t;
	t->parent = parent;
	t->armed = true;
	h->n++;
	sift_up(h, t);
}

void rb__timer_cancel(struct rb_timers *h, struct rb_timer *t)
{
	if (t->armed)
		heap_remove(h, t);
}

uint64_t rb__timers_next(const struct rb_timers *h)
{
	return h->root ? h->root->when : UINT64_MAX;
}

int64_t rb__timers_timeout(const struct rb_timers *h, uint64_t now)
{
	uint64_t next = rb__timers_next(h);

	if (next == UINT64_MAX)
		return -1;
	if (next <= now)
		return 0;
	return next - now > (uint64_t)RB_TIMEOUT_MAX_US ? RB_TIMEOUT_MAX_US : (int64_t)(next - now);
}

unsigned rb__timers_run(struct rb_timers *h, uint64_t now, void *arg)
{
	uint64_t limit = h->seq; /* timers armed by the callbacks wait for the next call */
	unsigned fired = 0;

	while (h->root && h->root->when <= now && h->root->seq < limit) {
		struct rb_timer *t = h->root;
		heap_remove(h, t);
		fired++;
		if (t->fn)
			t->fn(t, arg);
	}
	return fired;
}
