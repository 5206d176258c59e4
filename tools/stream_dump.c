/*
 * stream_dump: print the structure of a vmferry migration stream
 * (docs/stream-format.md), like QEMU's analyze-migration.py.
 *
 *   stream_dump [--pages] [--save OUT] FILE
 *   stream_dump [--pages] [--save OUT] [--timeout SEC] --listen URI
 *
 * From a FILE the stream is parsed in place (mmap).  With --listen the tool
 * stands in for a destination: it accepts one migration connection, prints
 * the stream as it arrives, and answers on the return path with an error
 * (ECANCELED) so the source keeps running its guest.
 *
 * --save writes the stream back out as it is parsed, re-encoding each record
 * after the parser has validated it.  For a valid stream the copy is
 * byte-identical to what arrived (the format has exactly one encoding of
 * each record: pads are zero, flags have one valid bit); for a malformed one
 * it holds the valid prefix, up to the last complete record.
 *
 * Exit status: 0 for a complete valid stream, 1 for a malformed or truncated
 * one (or an I/O failure), 2 for usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/kvm.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migration/channel.h"
#include "migration/format.h"
#include "migration/load.h"
#include "migration/stream.h"
#include "migration/vmstate.h"
#include "util/crc32c.h"
#include "util/log.h"

#define DUMP_ERR_BYTES 512
#define DUMP_DEFAULT_TIMEOUT_S 60
/* How long to wait for the source to hang up after our reply. */
#define DUMP_DRAIN_TIMEOUT_MS 2000

struct dump {
	bool pages;            /* print every RAM record */
	FILE *save;            /* --save output, or NULL */
	int save_err;          /* first write error on @save */
	struct stream *s;
	struct mig_header h;
	uint64_t record_end;   /* stream offset after the last complete record */
	/* RAM records since the last non-RAM record (the per-pass summary) */
	uint64_t run_records, run_zero, run_data;
	uint64_t run_block_pages[MIG_MAX_BLOCKS];
	uint8_t page[MIG_PAGE_BYTES];
};

static void dump_usage(FILE *f)
{
	fprintf(f,
		"usage: stream_dump [OPTIONS] FILE\n"
		"       stream_dump [OPTIONS] --listen URI\n"
		"\n"
		"Print the structure of a vmferry migration stream (docs/stream-format.md).\n"
		"\n"
		"  -p, --pages         print every RAM record (default: a summary per pass)\n"
		"  -l, --listen URI    accept one migration from a source (unix:PATH or\n"
		"                      tcp:HOST:PORT), print it as it arrives, then refuse it\n"
		"                      on the return path so the source keeps its guest running\n"
		"  -s, --save OUT      also write the stream to OUT (byte-identical copy of a\n"
		"                      valid stream; the valid prefix of a malformed one)\n"
		"  -t, --timeout SEC   --listen: longest wait for the connection and for each\n"
		"                      read (default %d)\n"
		"  -h, --help          this text\n"
		"\n"
		"Exit status: 0 complete valid stream, 1 malformed/truncated stream or I/O\n"
		"error, 2 usage error.\n",
		DUMP_DEFAULT_TIMEOUT_S);
}

/* Bytes consumed from @s so far: the offset of the next unread byte. */
static uint64_t dump_offset(const struct stream *s)
{
	if (s->fd < 0)
		return s->pos; /* memory stream: the buffer is the whole stream */
	return s->bytes - (s->len - s->pos);
}

/* ---- --save: re-encode each validated record ---- */

static void dump_save_bytes(struct dump *d, const void *p, size_t n)
{
	if (!d->save || d->save_err || n == 0)
		return;
	if (fwrite(p, 1, n, d->save) != n)
		d->save_err = errno ? -errno : -EIO;
}

static void dump_save_le(struct dump *d, uint64_t v, unsigned nbytes)
{
	uint8_t b[8];

	for (unsigned i = 0; i < nbytes; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	dump_save_bytes(d, b, nbytes);
}

static void dump_save_header(struct dump *d, const struct mig_header *h)
{
	dump_save_le(d, MIG_MAGIC, 8);
	dump_save_le(d, h->version, 4);
	dump_save_le(d, h->page_bytes, 4);
	dump_save_le(d, h->nvcpus, 4);
	dump_save_le(d, h->nblocks, 4);
	dump_save_bytes(d, h->boot_id, MIG_BOOT_ID_BYTES);
	for (uint32_t i = 0; i < h->nblocks; i++) {
		size_t n = strlen(h->blocks[i].name);

		dump_save_le(d, n, 1);
		dump_save_bytes(d, h->blocks[i].name, n);
		dump_save_le(d, h->blocks[i].gpa, 8);
		dump_save_le(d, h->blocks[i].bytes, 8);
	}
}

/* ---- printing ---- */

static const char *dump_cpu_field_name(uint32_t kind)
{
	static const char *const names[VMSTATE_CPU__COUNT] = {
		[VMSTATE_CPU_REGS] = "regs",
		[VMSTATE_CPU_SREGS] = "sregs",
		[VMSTATE_CPU_XSAVE] = "xsave",
		[VMSTATE_CPU_XCRS] = "xcrs",
		[VMSTATE_CPU_EVENTS] = "events",
		[VMSTATE_CPU_MP_STATE] = "mp_state",
		[VMSTATE_CPU_DEBUGREGS] = "debugregs",
		[VMSTATE_CPU_MSRS] = "msrs",
	};

	return kind < VMSTATE_CPU__COUNT && names[kind] ? names[kind] : "?";
}

/* Print the RAM records seen since the last non-RAM record as one line. */
static void dump_flush_ram_summary(struct dump *d)
{
	if (!d->run_records)
		return;
	if (!d->pages) {
		printf("  RAM: %llu records, %llu zero pages, %llu data pages",
		       (unsigned long long)d->run_records, (unsigned long long)d->run_zero,
		       (unsigned long long)d->run_data);
		for (uint32_t i = 0; i < d->h.nblocks; i++)
			if (d->run_block_pages[i])
				printf("; block %u \"%s\": %llu pages", i, d->h.blocks[i].name,
				       (unsigned long long)d->run_block_pages[i]);
		printf("\n");
	}
	d->run_records = d->run_zero = d->run_data = 0;
	memset(d->run_block_pages, 0, sizeof(d->run_block_pages));
}

static int dump_header(void *opaque, const struct mig_header *h, char *err, size_t errlen)
{
	struct dump *d = opaque;
	uint8_t here[MIG_BOOT_ID_BYTES];

	(void)err; (void)errlen;
	d->h = *h;
	d->record_end = dump_offset(d->s);
	mig_boot_id(here);
	printf("@0 HEADER version %u, page %u bytes, %u vCPUs, %u RAM blocks\n",
	       h->version, h->page_bytes, h->nvcpus, h->nblocks);
	printf("  boot id ");
	for (unsigned i = 0; i < MIG_BOOT_ID_BYTES; i++)
		printf("%02x", h->boot_id[i]);
	printf(" (%s)\n", memcmp(here, h->boot_id, sizeof(here)) ? "another boot or host"
								 : "this host's current boot");
	for (uint32_t i = 0; i < h->nblocks; i++)
		printf("  block %u \"%s\": gpa %#llx, %llu bytes (%llu pages)\n", i,
		       h->blocks[i].name, (unsigned long long)h->blocks[i].gpa,
		       (unsigned long long)h->blocks[i].bytes,
		       (unsigned long long)(h->blocks[i].bytes / MIG_PAGE_BYTES));
	dump_save_header(d, h);
	return 0;
}

static int dump_ram(void *opaque, uint32_t block, uint64_t first_page, uint32_t npages,
		    bool zero, const uint32_t *page_crcs, struct stream *s, char *err,
		    size_t errlen)
{
	struct dump *d = opaque;
	uint8_t head[MIG_RAM_HEAD_MAX];
	/* The record's head, as re-encoded, is what the parser just read. */
	size_t head_len = mig_encode_ram_head(head, d->h.version, (uint8_t)block, zero, npages,
					      first_page, page_crcs);
	uint64_t at = dump_offset(s) - head_len;
	int r = 0;

	if (d->pages)
		printf("@%llu RAM %s block %u \"%s\" pages %llu+%u (gpa %#llx)\n",
		       (unsigned long long)at, zero ? "zero" : "data", block, d->h.blocks[block].name,
		       (unsigned long long)first_page, npages,
		       (unsigned long long)(d->h.blocks[block].gpa + first_page * MIG_PAGE_BYTES));
	dump_save_bytes(d, head, head_len);
	if (!d->save) {
		r = mig_load_ram_skip(NULL, block, first_page, npages, zero, page_crcs, s, err,
				      errlen);
	} else {
		for (uint32_t i = 0; !zero && i < npages && !stream_error(s) && !r; i++) {
			stream_get_bytes(s, d->page, sizeof(d->page));
			if (stream_error(s))
				break;
			if (!mig_page_crc_ok(page_crcs, i, d->page)) {
				snprintf(err, errlen, "RAM record: page %llu of block %u fails its "
					 "CRC check", (unsigned long long)(first_page + i), block);
				r = -EBADMSG;
			}
			dump_save_bytes(d, d->page, sizeof(d->page));
		}
	}
	if (r || stream_error(s))
		return r; /* mig_load reports the stream's error */
	d->record_end = dump_offset(s);
	d->run_records++;
	if (zero)
		d->run_zero += npages;
	else
		d->run_data += npages;
	d->run_block_pages[block] += npages;
	return 0;
}

static int dump_section_version(uint32_t id, uint32_t version, uint32_t supported,
				char *err, size_t errlen)
{
	if (version == 0 || version > supported) {
		snprintf(err, errlen, "section %u has version %u; this build reads 1..%u", id,
			 version, supported);
		return -EBADMSG;
	}
	return 0;
}

static int dump_section_vm(const uint8_t *data, uint32_t len, uint32_t version, char *err,
			   size_t errlen)
{
	struct vmstate_vm v;
	int r = vmstate_vm_parse(data, len, version, &v, err, errlen);

	if (r)
		return r;
	printf("  guest clock %llu ns, source stop time %llu ns, was_running %u, moves %llu\n",
	       (unsigned long long)v.guest_clock_ns, (unsigned long long)v.stop_ns, v.was_running,
	       (unsigned long long)v.moves);
	return 0;
}

/* Called only after vmstate_cpu_check() accepted the framing. */
static void dump_cpu_field(uint32_t kind, const uint8_t *p, uint32_t n)
{
	printf("    %-9s %6u bytes", dump_cpu_field_name(kind), n);
	switch (kind) {
	case VMSTATE_CPU_REGS: {
		struct kvm_regs r;

		memcpy(&r, p, sizeof(r));
		printf("  rip %#llx rsp %#llx rflags %#llx", (unsigned long long)r.rip,
		       (unsigned long long)r.rsp, (unsigned long long)r.rflags);
		break;
	}
	case VMSTATE_CPU_SREGS: {
		struct kvm_sregs r;

		memcpy(&r, p, sizeof(r));
		printf("  cr0 %#llx cr3 %#llx cr4 %#llx efer %#llx", (unsigned long long)r.cr0,
		       (unsigned long long)r.cr3, (unsigned long long)r.cr4,
		       (unsigned long long)r.efer);
		break;
	}
	case VMSTATE_CPU_MP_STATE: {
		struct kvm_mp_state m;

		memcpy(&m, p, sizeof(m));
		printf("  mp_state %u", m.mp_state);
		break;
	}
	case VMSTATE_CPU_MSRS: {
		uint32_t count;

		memcpy(&count, p, 4);
		printf("  %u MSRs", count);
		break;
	}
	}
	printf("\n");
}

static int dump_section_cpu(const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	uint32_t count;
	size_t off = 4;
	int r = vmstate_cpu_check(data, len, 0, err, errlen);

	if (r)
		return r;
	memcpy(&count, data, 4);
	for (uint32_t i = 0; i < count; i++) {
		uint32_t kind, n;

		memcpy(&kind, data + off, 4);
		memcpy(&n, data + off + 4, 4);
		dump_cpu_field(kind, data + off + 8, n);
		off += 8 + (size_t)n;
	}
	return 0;
}

static int dump_section(void *opaque, uint32_t id, uint32_t instance, uint32_t version,
			const uint8_t *data, uint32_t len, char *err, size_t errlen)
{
	struct dump *d = opaque;
	uint64_t end = dump_offset(d->s);
	uint8_t head[MIG_SECTION_HEAD_MAX];
	size_t head_len = mig_encode_section_head(head, d->h.version, MIG_REC_SECTION, id, instance,
						  version, len, crc32c(0, data, len));
	int r;

	dump_flush_ram_summary(d);
	printf("@%llu SECTION %s instance %u version %u, %u bytes\n",
	       (unsigned long long)(end - len - head_len), id == VMSTATE_SECTION_VM ? "vm" : "cpu",
	       instance, version, len);
	if (id == VMSTATE_SECTION_VM) {
		r = dump_section_version(id, version, VMSTATE_VM_VERSION, err, errlen);
		if (!r)
			r = dump_section_vm(data, len, version, err, errlen);
	} else {
		r = dump_section_version(id, version, VMSTATE_CPU_VERSION, err, errlen);
		if (!r)
			r = dump_section_cpu(data, len, err, errlen);
	}
	if (r)
		return r;
	dump_save_bytes(d, head, head_len);
	dump_save_bytes(d, data, len);
	d->record_end = end;
	return 0;
}

static int dump_pass_end(void *opaque, uint32_t pass)
{
	struct dump *d = opaque;

	dump_flush_ram_summary(d);
	printf("@%llu PASS_END %u\n", (unsigned long long)(dump_offset(d->s) - 5), pass);
	dump_save_le(d, MIG_REC_PASS_END, 1);
	dump_save_le(d, pass, 4);
	d->record_end = dump_offset(d->s);
	return 0;
}

/* Postcopy records: printed, and re-encoded for --save. */
static int dump_postcopy_advise(void *opaque, char *err, size_t errlen)
{
	struct dump *d = opaque;

	(void)err; (void)errlen;
	dump_flush_ram_summary(d);
	printf("@%llu POSTCOPY_ADVISE\n", (unsigned long long)d->record_end);
	dump_save_le(d, MIG_REC_POSTCOPY_ADVISE, 1);
	d->record_end = dump_offset(d->s);
	return 0;
}

static int dump_postcopy_discard(void *opaque, uint32_t block, uint64_t first_page,
				 uint32_t npages)
{
	struct dump *d = opaque;

	dump_flush_ram_summary(d);
	printf("  POSTCOPY_DISCARD block %u pages %llu+%u\n", block,
	       (unsigned long long)first_page, npages);
	/* One run per record when saving: the same pages, re-framed. */
	dump_save_le(d, MIG_REC_POSTCOPY_DISCARD, 1);
	dump_save_le(d, block, 1);
	dump_save_le(d, 1, 4);
	dump_save_le(d, first_page, 8);
	dump_save_le(d, npages, 4);
	return 0;
}

static int dump_postcopy_run(void *opaque, char *err, size_t errlen)
{
	struct dump *d = opaque;

	(void)err; (void)errlen;
	dump_flush_ram_summary(d);
	printf("@%llu POSTCOPY_RUN\n", (unsigned long long)d->record_end);
	dump_save_le(d, MIG_REC_POSTCOPY_RUN, 1);
	d->record_end = dump_offset(d->s);
	return 0;
}

static int dump_cpr(void *opaque, const uint8_t *token, char *err, size_t errlen)
{
	struct dump *d = opaque;

	(void)err; (void)errlen;
	dump_flush_ram_summary(d);
	printf("@%llu CPR token ", (unsigned long long)d->record_end);
	for (unsigned i = 0; i < MIG_CPR_TOKEN_BYTES; i++)
		printf("%02x", token[i]);
	printf(" (RAM is shared over the cpr channel)\n");
	dump_save_le(d, MIG_REC_CPR, 1);
	dump_save_bytes(d, token, MIG_CPR_TOKEN_BYTES);
	d->record_end = dump_offset(d->s);
	return 0;
}

static const struct mig_load_ops dump_ops = {
	.cpr = dump_cpr,
	.header = dump_header,
	.ram = dump_ram,
	.section = dump_section,
	.pass_end = dump_pass_end,
	.postcopy_advise = dump_postcopy_advise,
	.postcopy_discard = dump_postcopy_discard,
	.postcopy_run = dump_postcopy_run,
};

/*
 * Parse the whole stream from @s, printing as it goes.  0 for a complete
 * valid stream, or -errno with the reason printed (and in @err).
 */
static int dump_stream(struct dump *d, struct stream *s, const char *what, char *err,
		       size_t errlen)
{
	struct mig_load_stats st;
	int r;

	d->s = s;
	r = mig_load(s, &dump_ops, d, &st, err, errlen);
	dump_flush_ram_summary(d);
	if (r) {
		printf("ERROR at byte %llu (in the record starting at byte %llu): %s\n",
		       (unsigned long long)dump_offset(s), (unsigned long long)d->record_end, err);
		fprintf(stderr, "stream_dump: %s: malformed stream at byte %llu (record at %llu): %s\n",
			what, (unsigned long long)dump_offset(s), (unsigned long long)d->record_end,
			err);
		return r;
	}
	printf("@%llu END\n", (unsigned long long)(dump_offset(s) - 1));
	dump_save_le(d, MIG_REC_END, 1);
	printf("summary: %llu bytes, %llu RAM records (%llu zero pages, %llu data pages), "
	       "%llu sections, %llu passes\n",
	       (unsigned long long)dump_offset(s), (unsigned long long)st.ram_records,
	       (unsigned long long)st.zero_pages, (unsigned long long)st.data_pages,
	       (unsigned long long)st.sections, (unsigned long long)st.passes);
	return 0;
}

static int dump_file(struct dump *d, const char *path, char *err, size_t errlen)
{
	struct stream s;
	struct stat stt;
	void *map = NULL;
	size_t len = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		fprintf(stderr, "stream_dump: %s: %s\n", path, strerror(errno));
		return r;
	}
	if (fstat(fd, &stt) < 0) {
		r = -errno;
		fprintf(stderr, "stream_dump: %s: %s\n", path, strerror(errno));
		goto out_close;
	}
	len = (size_t)stt.st_size;
	if (len) {
		map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			r = -errno;
			fprintf(stderr, "stream_dump: %s: mmap: %s\n", path, strerror(errno));
			goto out_close;
		}
	}
	stream_init_mem(&s, map, len);
	r = dump_stream(d, &s, path, err, errlen);
	if (!r && s.pos != len) {
		/* Nothing follows END on the wire: extra bytes mean this is not a stream file. */
		snprintf(err, errlen, "%zu bytes after END", len - s.pos);
		fprintf(stderr, "stream_dump: %s: %s\n", path, err);
		r = -EBADMSG;
	}
	stream_release(&s);
	if (map)
		munmap(map, len);
out_close:
	close(fd);
	return r;
}

/* Wait (briefly) for the source to hang up, so our reply is not lost to a reset. */
static void dump_drain(int fd)
{
	struct stream s;

	if (stream_init(&s, fd, DUMP_DRAIN_TIMEOUT_MS))
		return;
	while (!stream_error(&s))
		(void)stream_get_u8(&s); /* buffered: one recv() per 256 KiB */
	stream_release(&s);
}

static int dump_listen(struct dump *d, const char *uri_text, int timeout_s, char *err,
		       size_t errlen)
{
	struct channel_uri uri;
	struct stream s, rp;
	int lfd, fd, r, rr;

	r = channel_uri_parse(uri_text, &uri, err, errlen);
	if (r) {
		fprintf(stderr, "stream_dump: %s\n", err);
		return r;
	}
	lfd = channel_listen(&uri);
	if (lfd < 0) {
		fprintf(stderr, "stream_dump: cannot listen on %s: %s\n", uri_text, strerror(-lfd));
		return lfd;
	}
	if (uri.kind == CHANNEL_TCP) {
		/* Port 0 picks a free port: say which, so a source can be pointed at it. */
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		char host[NI_MAXHOST], port[NI_MAXSERV];

		if (getsockname(lfd, (struct sockaddr *)&ss, &sl) == 0 &&
		    getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
				NI_NUMERICHOST | NI_NUMERICSERV) == 0)
			fprintf(stderr, ss.ss_family == AF_INET6 ? "stream_dump: listening on tcp:[%s]:%s\n"
								 : "stream_dump: listening on tcp:%s:%s\n",
				host, port);
	} else {
		fprintf(stderr, "stream_dump: listening on %s\n", uri_text);
	}
	fd = channel_accept(lfd, timeout_s * 1000, -1);
	if (fd < 0) {
		r = fd;
		fprintf(stderr, "stream_dump: no migration arrived on %s: %s\n", uri_text,
			strerror(-fd));
		goto out_listen;
	}
	r = stream_init(&s, fd, timeout_s * 1000);
	if (r) {
		fprintf(stderr, "stream_dump: %s\n", strerror(-r));
		goto out_conn;
	}
	r = dump_stream(d, &s, uri_text, err, errlen);
	stream_release(&s);

	/*
	 * Refuse the migration on the return path so the source resumes its
	 * guest.  A separate stream: the read stream's buffer is not a write
	 * buffer.
	 */
	rr = stream_init(&rp, fd, timeout_s * 1000);
	if (!rr) {
		char text[MIG_ERRMSG_MAX + 1];

		if (r)
			snprintf(text, sizeof(text), "stream_dump: refused: %s", err);
		else
			snprintf(text, sizeof(text), "stream_dump: inspected, not run");
		mig_rp_send_error(&rp, r ? r : -ECANCELED, text);
		rr = stream_error(&rp);
		if (rr)
			fprintf(stderr, "stream_dump: return path: %s\n", rp.errmsg);
		else
			fprintf(stderr, "stream_dump: told the source: %s\n", text);
		stream_release(&rp);
	}
	if (!rr) {
		shutdown(fd, SHUT_WR);
		dump_drain(fd);
	}
	if (!r && rr)
		r = rr;
out_conn:
	close(fd);
out_listen:
	close(lfd);
	if (uri.kind == CHANNEL_UNIX)
		unlink(uri.path);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "pages", no_argument, NULL, 'p' },
		{ "listen", required_argument, NULL, 'l' },
		{ "save", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dump *d;
	const char *listen_uri = NULL, *save_path = NULL;
	char err[DUMP_ERR_BYTES] = "";
	int timeout_s = DUMP_DEFAULT_TIMEOUT_S;
	bool pages = false;
	int c, r;

	while ((c = getopt_long(argc, argv, "pl:s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			pages = true;
			break;
		case 'l':
			listen_uri = optarg;
			break;
		case 's':
			save_path = optarg;
			break;
		case 't': {
			char *end;
			long v = strtol(optarg, &end, 10);

			if (*optarg == 0 || *end || v < 1 || v > 86400) {
				fprintf(stderr, "stream_dump: --timeout wants 1..86400 seconds\n");
				return 2;
			}
			timeout_s = (int)v;
			break;
		}
		case 'h':
			dump_usage(stdout);
			return 0;
		default:
			dump_usage(stderr);
			return 2;
		}
	}
	if ((listen_uri && optind != argc) || (!listen_uri && optind != argc - 1)) {
		dump_usage(stderr);
		return 2;
	}

	if (save_path && !listen_uri) {
		struct stat in_st, out_st;

		/* Opening OUT truncates it: never let that be the stream being read. */
		if (stat(argv[optind], &in_st) == 0 && stat(save_path, &out_st) == 0 &&
		    in_st.st_dev == out_st.st_dev && in_st.st_ino == out_st.st_ino) {
			fprintf(stderr, "stream_dump: --save %s would overwrite the input\n", save_path);
			return 2;
		}
	}

	d = calloc(1, sizeof(*d));
	if (!d) {
		fprintf(stderr, "stream_dump: out of memory\n");
		return 1;
	}
	d->pages = pages;
	/* Print each record as it arrives, even into a pipe. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (save_path) {
		d->save = fopen(save_path, "we");
		if (!d->save) {
			fprintf(stderr, "stream_dump: %s: %s\n", save_path, strerror(errno));
			free(d);
			return 1;
		}
	}

	if (listen_uri)
		r = dump_listen(d, listen_uri, timeout_s, err, sizeof(err));
	else
		r = dump_file(d, argv[optind], err, sizeof(err));

	if (d->save) {
		if (fclose(d->save) && !d->save_err)
			d->save_err = errno ? -errno : -EIO;
		if (d->save_err) {
			fprintf(stderr, "stream_dump: writing %s: %s\n", save_path,
				strerror(-d->save_err));
			if (!r)
				r = d->save_err;
		}
	}
	free(d);
	return r ? 1 : 0;
}
