"""The central findings service (``mailpath collector``): API, storage and dashboard.

It validates what agents send with the published finding models (``mailpath.agent.finding``)
and imports nothing else of mailpath: no probe engine, no boto3, no CLI.
"""
