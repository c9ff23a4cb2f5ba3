/* SPDX-License-Identifier: MIT */
/*
 * The character generator stream of RFC 864, as rebound-bench verifies it.
 *
 * Exactly what is checked, byte for byte, from the first byte a new
 * connection receives (offset 0):
 *   - the 95 printable ASCII characters 32 (' ') to 126 ('~') are numbered
 *     0 to 94 in that order and form a ring (94 is followed by 0);
 *   - line N (N = 0, 1, 2, ...) is the 72 characters numbered N mod 95
 *     through (N + 71) mod 95, followed by CR LF: 74 bytes per line;
 *   - so line 0 starts with ' ' (and ends with 'g'), line 1 starts with '!',
 *     and the stream repeats every 95 lines (95 * 74 = 7030 bytes);
 *   - every connection starts at line 0, column 0: byte 0 is ' '.
 * Byte k of the stream is therefore a pure function of k (rbb_chargen_byte),
 * and a receiver needs only its offset to check what arrives.
 */
#ifndef RBB_CHARGEN_H
#define RBB_CHARGEN_H

#include <stddef.h>
#include <stdint.h>

#define RBB_CHARGEN_FIRST      32u /* ' ': character number 0 */
#define RBB_CHARGEN_CHARS      95u /* ' ' (32) to '~' (126) */
#define RBB_CHARGEN_LINE       72u /* characters per line, before CR LF */
#define RBB_CHARGEN_LINE_BYTES 74u /* with CR LF */
#define RBB_CHARGEN_PERIOD     (RBB_CHARGEN_CHARS * RBB_CHARGEN_LINE_BYTES) /* 7030 */

/* Builds the tables the functions below share (they also do it on first use). */
void rbb_chargen_prepare(void);
/* Byte @off of the chargen stream (computed from the definition above). */
uint8_t rbb_chargen_byte(uint64_t off);
/* Writes bytes [off, off + len) of the chargen stream into @buf. */
void rbb_chargen_fill(uint64_t off, void *buf, size_t len);
/*
 * Compares @buf with bytes [off, off + len) of the chargen stream. Returns
 * the index in @buf of the first byte that differs, or @len if all match.
 */
size_t rbb_chargen_check(uint64_t off, const void *buf, size_t len);
/*
 * Describes stream offset @off for an error message: "line L, column C"
 * (column 72 is the CR, 73 the LF). Returns @buf.
 */
const char *rbb_chargen_where(uint64_t off, char *buf, size_t len);

#endif
