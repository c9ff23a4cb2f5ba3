/* SPDX-License-Identifier: MIT */
/* The in-kernel model (sockmap.c, built only with libbpf and clang's BPF target). */
#ifndef REBOUND_SOCKMAP_H
#define REBOUND_SOCKMAP_H

#include <stddef.h>

#include "engines.h"

/* 0 if a sockmap echo can run here, else -errno with the reason in why:
 * -ENOSYS (no bpf() or no sockhash), -EPERM (missing capability, or BPF
 * refused by policy), -ENOTSUP (the program does not load or attach). */
int rb__sockmap_probe(char *why, size_t whylen);

extern const struct rb_model_ops rb__sockmap_model;

#endif
