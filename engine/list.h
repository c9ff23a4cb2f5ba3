/* SPDX-License-Identifier: MIT */
#ifndef REBOUND_LIST_H
#define REBOUND_LIST_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>

/* ---- intrusive doubly linked list (circular, with a sentinel) ---- */
struct rb_list {
	struct rb_list *prev, *next;
};

static inline void rb_list_init(struct rb_list *l)
{
	l->prev = l->next = l;
}

static inline bool rb_list_empty(const struct rb_list *l)
{
	return l->next == l;
}

static inline bool rb_list_unlinked(const struct rb_list *n)
{
	return n->next == n && n->prev == n;
}

/* n must not be on any list (asserted: linking a linked node corrupts two lists). */
static inline void rb_list_add_tail(struct rb_list *head, struct rb_list *n)
{
	assert(rb_list_unlinked(n));
	n->prev = head->prev;
	n->next = head;
	head->prev->next = n;
	head->prev = n;
}

static inline void rb_list_del(struct rb_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

/* Move every entry of src to the tail of dst; src becomes empty. */
static inline void rb_list_splice_tail(struct rb_list *dst, struct rb_list *src)
{
	if (rb_list_empty(src))
		return;
	src->next->prev = dst->prev;
	dst->prev->next = src->next;
	src->prev->next = dst;
	dst->prev = src->prev;
	rb_list_init(src);
}

/* Unlink and return the first entry, or NULL if the list is empty. */
static inline struct rb_list *rb_list_pop(struct rb_list *l)
{
	struct rb_list *n = l->next;

	if (n == l)
		return NULL;
	rb_list_del(n);
	return n;
}

#define rb_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#endif
