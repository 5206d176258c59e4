#include "vmm/guest_image.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/size.h"

const char *guest_builtin_names(void)
{
	static char names[256];
	size_t used = 0;

	if (names[0])
		return names;
	for (const struct guest_builtin *b = guest_builtins; b->name; b++) {
		int n = snprintf(names + used, sizeof(names) - used, "%s%s",
				 used ? ", " : "", b->name);
		if (n < 0 || (size_t)n >= sizeof(names) - used)
			break;
		used += (size_t)n;
	}
	return names;
}

static int guest_spec_read_file(const char *path, struct guest_spec *out)
{
	struct stat st;
	ssize_t got;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		log_error("guest: cannot open %s: %s", path, strerror(errno));
		return err;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    st.st_size > 16 * 1024 * 1024) {
		log_error("guest: %s is not a regular file of 1 byte..16 MiB", path);
		close(fd);
		return -ENOEXEC;
	}
	out->owned_buf = malloc((size_t)st.st_size);
	if (!out->owned_buf) {
		close(fd);
		return -ENOMEM;
	}
	got = read(fd, out->owned_buf, (size_t)st.st_size);
	close(fd);
	if (got != st.st_size) {
		log_error("guest: short read of %s", path);
		return -EIO;
	}
	out->elf = out->owned_buf;
	out->elf_bytes = (size_t)st.st_size;
	return 0;
}

static int guest_spec_add_param(struct guest_spec *out, const char *kv)
{
	const char *eq = strchr(kv, '=');
	struct vmf_param *p;
	size_t klen;
	int err;

	if (!eq || eq == kv) {
		log_error("guest: parameter '%s' is not key=value", kv);
		return -EINVAL;
	}
	klen = (size_t)(eq - kv);
	if (klen >= VMF_PARAM_KEY_BYTES) {
		log_error("guest: parameter name in '%s' longer than %u bytes", kv,
			  VMF_PARAM_KEY_BYTES - 1);
		return -EINVAL;
	}
	if (out->nparams >= VMF_MAX_PARAMS) {
		log_error("guest: more than %u parameters", VMF_MAX_PARAMS);
		return -EINVAL;
	}
	p = &out->params[out->nparams];
	memcpy(p->key, kv, klen);
	p->key[klen] = 0;
	err = size_parse(eq + 1, &p->value);
	if (err) {
		log_error("guest: parameter %s: '%s' is not a number or size", p->key, eq + 1);
		memset(p, 0, sizeof(*p));
		return -EINVAL;
	}
	for (unsigned i = 0; i < out->nparams; i++)
		if (strcmp(out->params[i].key, p->key) == 0) {
			log_error("guest: parameter %s given twice", p->key);
			memset(p, 0, sizeof(*p));
			return -EINVAL;
		}
	out->nparams++;
	return 0;
}

int guest_spec_parse(const char *text, struct guest_spec *out)
{
	char *copy, *save = NULL, *tok, *what;
	int err = 0;

	memset(out, 0, sizeof(*out));
	if (!text || !*text) {
		log_error("guest: empty --guest");
		return -EINVAL;
	}
	copy = strdup(text);
	if (!copy)
		return -ENOMEM;
	what = strtok_r(copy, ",", &save);
	if (!what) {
		log_error("guest: empty --guest");
		err = -EINVAL;
		goto out;
	}
	if (strchr(what, '/') || (strlen(what) > 4 && !strcmp(what + strlen(what) - 4, ".elf"))) {
		const char *base = strrchr(what, '/');

		base = base ? base + 1 : what;
		snprintf(out->name, sizeof(out->name), "%.*s",
			 (int)(strcspn(base, ".")), base);
		err = guest_spec_read_file(what, out);
		if (err)
			goto out;
	} else {
		const struct guest_builtin *b;

		for (b = guest_builtins; b->name; b++)
			if (!strcmp(b->name, what))
				break;
		if (!b->name) {
			log_error("guest: unknown guest '%s' (built-in guests: %s; or give a path to an ELF file)",
				  what, guest_builtin_names());
			err = -ENOENT;
			goto out;
		}
		snprintf(out->name, sizeof(out->name), "%s", b->name);
		out->elf = b->start;
		out->elf_bytes = (size_t)(b->end - b->start);
	}
	while ((tok = strtok_r(NULL, ",", &save)) != NULL) {
		err = guest_spec_add_param(out, tok);
		if (err)
			goto out;
	}
out:
	free(copy);
	if (err)
		guest_spec_release(out);
	return err;
}

void guest_spec_release(struct guest_spec *spec)
{
	free(spec->owned_buf);
	spec->owned_buf = NULL;
	spec->elf = NULL;
}

int guest_image_load(const struct guest_spec *spec, uint8_t *ram,
		     uint64_t ram_bytes, uint64_t *entry_out)
{
	const uint8_t *img = spec->elf;
	size_t len = spec->elf_bytes;
	const uint64_t lo = VMF_IMAGE_GPA, hi = VMF_IMAGE_GPA + VMF_IMAGE_MAX_BYTES;
	Elf64_Ehdr eh;
	int loaded = 0;

	if (len < sizeof(eh))
		goto bad;
	memcpy(&eh, img, sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_X86_64 ||
	    eh.e_type != ET_EXEC || eh.e_phentsize != sizeof(Elf64_Phdr))
		goto bad;
	if (eh.e_phoff > len || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > len - eh.e_phoff)
		goto bad;
	if (hi > ram_bytes)
		goto bad;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (ph.p_filesz > ph.p_memsz || ph.p_offset > len ||
		    ph.p_filesz > len - ph.p_offset || ph.p_paddr < lo ||
		    ph.p_paddr > hi || ph.p_memsz > hi - ph.p_paddr)
			goto bad;
		memcpy(ram + ph.p_paddr, img + ph.p_offset, ph.p_filesz);
		memset(ram + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
		loaded++;
	}
	if (!loaded || eh.e_entry < lo || eh.e_entry >= hi)
		goto bad;
	*entry_out = eh.e_entry;
	return 0;
bad:
	log_error("guest: %s is not a valid vmferry guest (64-bit x86 ELF executable "
		  "linked inside [0x%llx, 0x%llx))", spec->name,
		  (unsigned long long)lo, (unsigned long long)hi);
	return -ENOEXEC;
}
