# Quickstart only: Kinesis + DynamoDB (+ CloudWatch) emulator and the record generator.
# moto's mocks served by hypercorn, which speaks HTTP/1.1 and the cleartext HTTP/2 (h2c) the
# KCL's Kinesis client insists on, on one port.
FROM python:3.12-slim
RUN pip install --no-cache-dir "moto[server]==5.2.5" "hypercorn==0.18.0" "boto3==1.44.8"
WORKDIR /deploy
COPY moto_app.py generator.py ./
EXPOSE 4566
CMD ["hypercorn", "--bind", "0.0.0.0:4566", "moto_app:app"]
