/* vmferry's version: `vmferry version`, the QMP greeting and query-version. */
#ifndef VMFERRY_UTIL_VERSION_H
#define VMFERRY_UTIL_VERSION_H

#define VMFERRY_VERSION_MAJOR 0
#define VMFERRY_VERSION_MINOR 1
#define VMFERRY_VERSION_MICRO 0
#define VMFERRY_VERSION "0.1.0"

#endif
