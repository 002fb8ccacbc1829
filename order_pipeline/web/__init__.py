"""The customer tracking page, the ops board and the Kuaidi100 push receiver.

The web app reads only the published tables (`order_tracking_*`, `order_alerts`,
`pipeline_state`) and writes only `tracking_access_log`. Build it with
`order_pipeline.web.app.create_app(config)`; issue customer links with
`order_pipeline.domain.links.customer_link(settings, order_no, now)`.
"""
