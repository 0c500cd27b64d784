"""Windows: a Job object that caps a converter child's committed memory and kills it with its parent.

Windows has no ``RLIMIT_AS``; a Job object with ``JOB_OBJECT_LIMIT_PROCESS_MEMORY`` makes the child's
allocations fail past the limit (Python raises ``MemoryError``), ``KILL_ON_JOB_CLOSE`` ends the child
when the worker closes the job or dies, and the job's peak memory says afterwards whether a child that
died without a word was at the limit. Plain ctypes, no pywin32. Every call goes through the small
:class:`Kernel32` protocol, so the logic is tested on Linux with a fake (tests/fakes.py). Used on the
task's thread by :mod:`.sandbox`.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

__all__ = [
    "ExtendedLimitInformation",
    "JobObject",
    "JobObjectError",
    "Kernel32",
    "windows_kernel32",
]

JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
JOB_OBJECT_LIMIT_PROCESS_MEMORY = 0x00000100
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
PROCESS_SET_QUOTA = 0x0100
PROCESS_TERMINATE = 0x0001
EXIT_KILLED = 137


class BasicLimitInformation(ctypes.Structure):
    """``JOBOBJECT_BASIC_LIMIT_INFORMATION``."""

    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class IoCounters(ctypes.Structure):
    """``IO_COUNTERS``."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    ]


class ExtendedLimitInformation(ctypes.Structure):
    """``JOBOBJECT_EXTENDED_LIMIT_INFORMATION``."""

    _fields_ = [
        ("BasicLimitInformation", BasicLimitInformation),
        ("IoInfo", IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class Kernel32(Protocol):
    """The kernel32 functions a :class:`JobObject` calls (names and arguments as Win32 has them).

    Structures are passed as instances; the real functions' ``argtypes`` turn them into pointers.
    Each returns a handle or a BOOL; zero means failure, with the reason in :meth:`last_error`.
    """

    def CreateJobObjectW(self, attributes: Any, name: Any) -> int: ...  # noqa: N802 - the Win32 name

    def SetInformationJobObject(  # noqa: N802
        self, job: int, info_class: int, info: ExtendedLimitInformation, size: int
    ) -> int: ...

    def QueryInformationJobObject(  # noqa: N802
        self, job: int, info_class: int, info: ExtendedLimitInformation, size: int, returned: Any
    ) -> int: ...

    def OpenProcess(self, access: int, inherit: bool, pid: int) -> int: ...  # noqa: N802

    def AssignProcessToJobObject(self, job: int, process: int) -> int: ...  # noqa: N802

    def TerminateJobObject(self, job: int, exit_code: int) -> int: ...  # noqa: N802

    def CloseHandle(self, handle: int) -> int: ...  # noqa: N802

    def last_error(self) -> int:
        """The calling thread's last Win32 error (``ctypes.get_last_error``)."""
        ...


class JobObjectError(OSError):
    """A Job object call failed; the message names the call and the Win32 error code."""


class _WinDll:
    """The real :class:`Kernel32`: ``ctypes.WinDLL('kernel32')`` with argument types declared."""

    def __init__(self) -> None:
        from ctypes import wintypes

        dll = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        info = ctypes.POINTER(ExtendedLimitInformation)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "CreateJobObjectW": (wintypes.HANDLE, [ctypes.c_void_p, wintypes.LPCWSTR]),
            "SetInformationJobObject": (
                wintypes.BOOL,
                [wintypes.HANDLE, ctypes.c_int, info, wintypes.DWORD],
            ),
            "QueryInformationJobObject": (
                wintypes.BOOL,
                [wintypes.HANDLE, ctypes.c_int, info, wintypes.DWORD, ctypes.c_void_p],
            ),
            "OpenProcess": (wintypes.HANDLE, [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]),
            "AssignProcessToJobObject": (wintypes.BOOL, [wintypes.HANDLE, wintypes.HANDLE]),
            "TerminateJobObject": (wintypes.BOOL, [wintypes.HANDLE, wintypes.UINT]),
            "CloseHandle": (wintypes.BOOL, [wintypes.HANDLE]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(dll, name)
            function.restype, function.argtypes = restype, argtypes
            setattr(self, name, function)

    def last_error(self) -> int:
        return int(ctypes.get_last_error())  # type: ignore[attr-defined]


def windows_kernel32() -> Kernel32:
    """The real kernel32 (Windows only)."""
    return _WinDll()  # type: ignore[return-value]


class JobObject:
    """One Job object whose processes may each commit at most ``memory_limit_bytes``.

    Args:
        kernel32: The Win32 functions (:func:`windows_kernel32`, or a fake in tests).
        memory_limit_bytes: ``ProcessMemoryLimit`` of every process in the job.

    Raises:
        JobObjectError: The job cannot be created or limited.
    """

    def __init__(self, kernel32: Kernel32, memory_limit_bytes: int) -> None:
        self._k = kernel32
        self.memory_limit_bytes = memory_limit_bytes
        handle = kernel32.CreateJobObjectW(None, None)
        if not handle:
            raise self._error("CreateJobObjectW")
        self._handle: int | None = handle
        info = ExtendedLimitInformation()
        info.BasicLimitInformation.LimitFlags = (
            JOB_OBJECT_LIMIT_PROCESS_MEMORY
            | JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
            | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
        )
        info.ProcessMemoryLimit = memory_limit_bytes
        if not kernel32.SetInformationJobObject(
            handle, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, info, ctypes.sizeof(info)
        ):
            error = self._error("SetInformationJobObject")
            self.close()
            raise error

    def _error(self, call: str) -> JobObjectError:
        code = self._k.last_error()
        return JobObjectError(code, f"{call} failed (Windows error {code})")

    def _job(self) -> int:
        if self._handle is None:
            raise JobObjectError(0, "the Job object is closed")
        return self._handle

    def assign(self, pid: int) -> None:
        """Put process ``pid`` in the job (before it reads any input)."""
        job = self._job()
        process = self._k.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
        if not process:
            raise self._error("OpenProcess")
        try:
            if not self._k.AssignProcessToJobObject(job, process):
                raise self._error("AssignProcessToJobObject")
        finally:
            self._k.CloseHandle(process)

    def peak_process_memory(self) -> int:
        """The most memory any process of the job committed (0 when it cannot be asked)."""
        info = ExtendedLimitInformation()
        ok = self._k.QueryInformationJobObject(
            self._job(), JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS, info, ctypes.sizeof(info), None
        )
        return int(info.PeakProcessMemoryUsed) if ok else 0

    def reached_limit(self) -> bool:
        """Whether a process of the job came within a megabyte of the memory limit."""
        return self.peak_process_memory() >= self.memory_limit_bytes - 1024 * 1024

    def terminate(self) -> None:
        """Kill every process in the job."""
        if self._handle is not None:
            self._k.TerminateJobObject(self._handle, EXIT_KILLED)

    def close(self) -> None:
        """Close the job (its processes are killed: ``KILL_ON_JOB_CLOSE``); idempotent."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._k.CloseHandle(handle)
