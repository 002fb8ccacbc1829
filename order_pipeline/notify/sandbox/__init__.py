"""Loopback stand-ins for Aliyun SMS, Tencent Cloud SMS and WeChat, for the tests, the benchmarks and the demo.

Each holds one set of credentials, checks a request the way the vendor does (an SMS stand-in recomputes the
signature with code of its own, not the client's signer; WeChat's checks its access tokens) and refuses what
the vendor refuses in the vendor's own answer shape; it records what it accepted and can be told to answer
flow control, a blacklist or an unfollowed account for chosen customers.
"""
