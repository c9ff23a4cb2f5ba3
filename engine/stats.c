/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdio.h>

#include "internal.h"

int rb_stats_json(const struct rb_stats *st, char *buf, size_t len)
{
	int n = snprintf(
		buf, len,
		"{\"accepted\":%" PRIu64 ",\"active\":%" PRIu64 ",\"closed\":%" PRIu64
		",\"refused\":%" PRIu64 ",\"resets\":%" PRIu64 ",\"bytes_in\":%" PRIu64
		",\"bytes_out\":%" PRIu64 ",\"read_calls\":%" PRIu64 ",\"write_calls\":%" PRIu64
		",\"wakeups\":%" PRIu64 ",\"requeues\":%" PRIu64 ",\"pauses\":%" PRIu64
		",\"memory_waits\":%" PRIu64 ",\"buffered\":%" PRIu64 ",\"peak_buffered\":%" PRIu64
		",\"peak_conn_buffered\":%" PRIu64 ",\"chunks_allocated\":%" PRIu64
		",\"chunks_cached\":%" PRIu64 ",\"bytes_spliced\":%" PRIu64
		",\"splice_calls\":%" PRIu64 ",\"pipe_cache_hits\":%" PRIu64
		",\"splice_fallbacks\":%" PRIu64 ",\"datagrams_in\":%" PRIu64
		",\"datagrams_out\":%" PRIu64 ",\"datagram_drops\":%" PRIu64 "}",
		st->accepted, st->active, st->closed, st->refused, st->resets, st->bytes_in,
		st->bytes_out, st->read_calls, st->write_calls, st->wakeups, st->requeues,
		st->pauses, st->memory_waits, st->buffered, st->peak_buffered,
		st->peak_conn_buffered, st->chunks_allocated, st->chunks_cached,
		st->bytes_spliced, st->splice_calls, st->pipe_cache_hits, st->splice_fallbacks,
		st->datagrams_in, st->datagrams_out, st->datagram_drops);
	return n < 0 ? 0 : n;
}
