#ifndef SLUICE_CFUZZMAIN_H
#define SLUICE_CFUZZMAIN_H
// Nothing for Swift to call: this module only supplies the executable's entry point (see main.c).
#endif
